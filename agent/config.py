"""The node agent's configuration: TOML text to a validated, frozen `AgentConfig`.

Parsing is pure; reading the file is `load_agent_config`'s only business. Every error names the key
at fault and the value given.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.refresh import RefreshPolicy

DEFAULT_CONFIG_PATH = Path("/etc/rolecall/agent.toml")
#: Where `rolecall-controller enroll-node NAME --out /etc/rolecall` writes the node's files.
DEFAULT_CERTIFICATE = Path("/etc/rolecall/node.pem")
DEFAULT_KEY = Path("/etc/rolecall/node.key")
DEFAULT_CA_CERTIFICATE = Path("/etc/rolecall/ca.pem")

_NAMESPACE_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
#: A system user name as useradd and systemd-sysusers accept it.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: The user the serving process runs as (systemd/rolecall.sysusers makes it).
DEFAULT_USER = "rolecall-agent"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and says what it must be."""


@dataclass(frozen=True)
class AgentConfig:
    #: The controller's node API, tried in order (several for failover); https only.
    controller_urls: tuple[str, ...]
    #: The node's client certificate and key, and the CA that signed the controller's certificate.
    certificate: Path = DEFAULT_CERTIFICATE
    key: Path = DEFAULT_KEY
    ca_certificate: Path = DEFAULT_CA_CERTIFICATE
    #: How long each assignments long poll may wait at the controller.
    long_poll_seconds: int = 60
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9774
    #: Refresh credentials when this fraction of their lifetime has passed (jittered earlier).
    refresh_fraction: float = 0.5
    #: Never serve credentials with less than this left while the controller answers.
    min_remaining_seconds: int = 30 * 60
    #: At most this many credential calls to the controller at once, for all instances together.
    max_concurrent_fetches: int = 8
    #: Refuse IMDS requests that look proxied (X-Forwarded-For, Forwarded, Via, a foreign Host).
    strict_proxy: bool = True
    #: Each instance's IMDS token bucket.
    rate_per_second: float = 50.0
    burst: int = 100
    #: The IMDS port inside each instance's namespace.
    imds_port: int = 80
    #: The most metadata connections one instance holds at once; at the limit its socket stops
    #: accepting until one closes, and other instances are not affected.
    max_connections_per_instance: int = 32
    #: The most metadata connections of all instances together; None: the process's
    #: descriptor limit less a reserve for the listening sockets, the node API and metrics.
    max_connections: int | None = None
    #: Namespaces the agent creates are named with this prefix (``rc-<instance-id>``).
    namespace_prefix: str = "rc-"
    #: The unprivileged user the serving process (HTTP, TLS to the controller) runs as.
    user: str = DEFAULT_USER

    def connection_limit(self, descriptors: int, instances: int = 1000) -> int:
        """All instances' connections together, when the process may open ``descriptors``:
        what is left after one listening socket per instance (``instances`` expected) and a
        reserve of 256 for the node API client, the metrics port and files."""
        if self.max_connections is not None:
            return self.max_connections
        return max(16, descriptors - instances - 256)

    def refresh_policy(self) -> RefreshPolicy:
        """The credential schedule this configuration asks for."""
        return RefreshPolicy(
            refresh_fraction=self.refresh_fraction,
            min_remaining_seconds=float(self.min_remaining_seconds),
        )


Converter = Callable[[str, object], Any]


def _integer(low: int, high: int, unit: str = "an integer") -> Converter:
    def convert(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: must be {unit} from {low} to {high} (got {value!r})")
        return value

    return convert


def _number(low: float, high: float) -> Converter:
    def convert(key: str, value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"{key}: must be a number from {low:g} to {high:g} (got {value!r})")
        return float(value)

    return convert


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false (got {value!r})")
    return value


def _path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty path string (got {value!r})")
    return Path(value)


def _host(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a host name or address (got {value!r})")
    return value


def _https_url(key: str, value: object) -> str:
    what = "an https URL with a host and no user, query or fragment"
    if not isinstance(value, str) or not value or any(char.isspace() for char in value):
        raise ConfigError(f"{key}: each must be {what} (got {value!r})")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise ConfigError(f"{key}: each must be {what} (got {value!r})") from error
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(f"{key}: each must be {what} (got {value!r})")
    return value.rstrip("/")


def _urls(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: must be a non-empty list of https URLs (got {value!r})")
    urls = tuple(_https_url(key, item) for item in value)
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{key}: lists a URL twice (got {value!r})")
    return urls


def _namespace_prefix(key: str, value: object) -> str:
    if not isinstance(value, str) or not _NAMESPACE_PREFIX.fullmatch(value):
        raise ConfigError(
            f"{key}: must be 1 to 32 letters, digits, '_', '.' or '-', starting with a letter or"
            f" digit (got {value!r})"
        )
    return value


def _user(key: str, value: object) -> str:
    if not isinstance(value, str) or not _USER_NAME.fullmatch(value) or value == "root":
        raise ConfigError(
            f"{key}: must be the name of a system user other than root (lower-case letters,"
            f" digits, '_' or '-') (got {value!r})"
        )
    return value


_PORT = _integer(0, 65535, "a port number")

# TOML key -> (field name, converter)
_KEYS: dict[str, tuple[str, Converter]] = {
    "controller.urls": ("controller_urls", _urls),
    "controller.certificate": ("certificate", _path),
    "controller.key": ("key", _path),
    "controller.ca_certificate": ("ca_certificate", _path),
    # The controller caps a long poll at 300 s.
    "controller.long_poll_seconds": ("long_poll_seconds", _integer(1, 300, "a number of seconds")),
    "metrics.host": ("metrics_host", _host),
    "metrics.port": ("metrics_port", _PORT),
    # With the schedule's 0.1 of jitter, a refresh always falls between 10% and 80% of the life.
    "credentials.refresh_fraction": ("refresh_fraction", _number(0.2, 0.8)),
    "credentials.min_remaining_seconds": (
        "min_remaining_seconds",
        _integer(60, 6 * 3600, "a number of seconds"),
    ),
    "credentials.max_concurrent_fetches": ("max_concurrent_fetches", _integer(1, 256)),
    "imds.strict_proxy": ("strict_proxy", _boolean),
    "imds.rate_per_second": ("rate_per_second", _number(0.1, 100_000)),
    "imds.burst": ("burst", _integer(1, 1_000_000)),
    "imds.port": ("imds_port", _integer(1, 65535, "a port number")),
    "imds.max_connections_per_instance": ("max_connections_per_instance", _integer(1, 100_000)),
    "imds.max_connections": ("max_connections", _integer(16, 10_000_000)),
    "namespaces.prefix": ("namespace_prefix", _namespace_prefix),
    "user": ("user", _user),
}
_REQUIRED = ("controller.urls",)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def agent_config_from_string(text: str, source: str = "<config>") -> AgentConfig:
    """A validated configuration from TOML text; `source` names the file in errors."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error
    flat = _flatten(table)
    values: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in _KEYS:
            raise ConfigError(f"{source}: unknown key {key} (known: {', '.join(sorted(_KEYS))})")
        field_name, convert = _KEYS[key]
        values[field_name] = convert(f"{source}: {key}", value)
    for key in _REQUIRED:
        if key not in flat:
            raise ConfigError(
                f'{source}: {key}: required (e.g. urls = ["https://controller.example:8775"])'
            )
    return AgentConfig(**values)


def load_agent_config(path: Path | None = None) -> AgentConfig:
    """The configuration in the file at `path` (by default /etc/rolecall/agent.toml)."""
    if path is None:
        path = DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text: {error.reason}") from error
    return agent_config_from_string(text, str(path))


#: AgentConfig fields that are paths, and the one that is a tuple, for `config_from_wire`.
_PATH_FIELDS = ("certificate", "key", "ca_certificate")


def config_to_wire(config: AgentConfig) -> dict[str, Any]:
    """The configuration as JSON values, for the serving process (which reads no file)."""
    wire = asdict(config)
    for name in _PATH_FIELDS:
        wire[name] = str(wire[name])
    wire["controller_urls"] = list(config.controller_urls)
    return wire


def config_from_wire(wire: dict[str, Any]) -> AgentConfig:
    """The inverse of `config_to_wire` (the privileged process made it from a valid config)."""
    values = dict(wire)
    for name in _PATH_FIELDS:
        values[name] = Path(values[name])
    values["controller_urls"] = tuple(values["controller_urls"])
    return AgentConfig(**values)
