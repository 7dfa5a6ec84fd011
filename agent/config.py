"""The node agent's configuration: TOML text to a validated, frozen `AgentConfig`.

Parsing is pure; reading the file is `load_agent_config`'s only business. Every error names the key
at fault and the value given.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.imds.headers import HEADER_NAME, NEUTRON, RESERVED_NAMES, HeaderScheme
from agent.refresh import RefreshPolicy
from common.tomlconfig import (
    ConfigError,
    Converter,
    Keys,
    boolean,
    host,
    integer,
    number,
    path,
    port,
    read_config_text,
    values_from_string,
)

__all__ = ["AgentConfig", "ConfigError", "agent_config_from_string", "load_agent_config"]

DEFAULT_CONFIG_PATH = Path("/etc/rolecall/agent.toml")
#: Where `rolecall-controller enroll-node NAME --out /etc/rolecall` writes the node's files.
DEFAULT_CERTIFICATE = Path("/etc/rolecall/node.pem")
DEFAULT_KEY = Path("/etc/rolecall/node.key")
DEFAULT_CA_CERTIFICATE = Path("/etc/rolecall/ca.pem")
#: Where the hypervisor's ``rolecall-agent plug``/``unplug``/``hook`` reach the agent.
DEFAULT_PLUG_SOCKET = Path("/run/rolecall-agent/plug.sock")

_NAMESPACE_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
#: A system user name as useradd and systemd-sysusers accept it.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
#: The user the serving process runs as (systemd/rolecall.sysusers makes it).
DEFAULT_USER = "rolecall-agent"


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
    #: A whole boot fits: cloud-init reads some 70 to 100 paths at once (bench/cloud_init.py).
    burst: int = 200
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
    #: The metadata service the paths RoleCall does not serve are forwarded to
    #: (``[imds.upstream]``, http or https); None: none, they are 404.
    upstream_url: str | None = None
    #: The file (root's, 0600) holding the secret that signs the instance id for it.
    upstream_shared_secret_file: Path | None = None
    #: Each forwarded request's deadline, from connecting to the answer's last byte.
    upstream_timeout_seconds: float = 2.0
    #: The largest body taken from it; a larger one is a 502.
    upstream_max_body_bytes: int = 1024 * 1024
    #: The trusted headers' names: Neutron's by default; "" leaves that header out (the
    #: account and the address only).
    upstream_instance_id_header: str = NEUTRON.instance_id
    upstream_account_id_header: str = NEUTRON.account_id or ""
    upstream_signature_header: str = NEUTRON.signature
    upstream_forwarded_for_header: str = NEUTRON.forwarded_for or ""
    #: The Unix socket (root's, 0600) the hypervisor names each VM's tap on (`agent.steer`).
    plug_socket: Path = DEFAULT_PLUG_SOCKET

    def connection_limit(self, descriptors: int, instances: int = 1000) -> int:
        """All instances' connections together, when the process may open ``descriptors``:
        what is left after one listening socket per instance (``instances`` expected) and a
        reserve of 256 for the node API client, the metrics port and files."""
        if self.max_connections is not None:
            return self.max_connections
        return max(16, descriptors - instances - 256)

    def upstream_scheme(self) -> HeaderScheme:
        """The trusted headers sent to the upstream metadata service, as configured."""
        return HeaderScheme(
            instance_id=self.upstream_instance_id_header,
            account_id=self.upstream_account_id_header or None,
            signature=self.upstream_signature_header,
            forwarded_for=self.upstream_forwarded_for_header or None,
        )

    def refresh_policy(self) -> RefreshPolicy:
        """The credential schedule this configuration asks for."""
        return RefreshPolicy(
            refresh_fraction=self.refresh_fraction,
            min_remaining_seconds=float(self.min_remaining_seconds),
        )


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


def _upstream_url(key: str, value: object) -> str:
    what = "an http or https URL with a host and no user, query or fragment"
    if not isinstance(value, str) or not value or not value.isascii():
        raise ConfigError(f"{key}: must be {what} (got {value!r})")
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ConfigError(f"{key}: must be {what} (got {value!r})")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise ConfigError(f"{key}: must be {what} (got {value!r})") from error
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or "@" in parts.netloc
        or parts.query
        or parts.fragment
        or "?" in value
        or "#" in value
    ):
        raise ConfigError(f"{key}: must be {what} (got {value!r})")
    return value.rstrip("/")


def _header_name(optional: bool) -> Converter:
    """A trusted header's name: an HTTP token, not one the agent or the guest already sends;
    with ``optional``, "" leaves the header out."""
    what = "an HTTP header name (up to 64 letters, digits and !#$%&'*+-.^_`|~)"
    if optional:
        what += ', or "" to leave it out'

    def convert(key: str, value: object) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be {what} (got {value!r})")
        if optional and value == "":
            return value
        if HEADER_NAME.fullmatch(value) is None:
            raise ConfigError(f"{key}: must be {what} (got {value!r})")
        if value.lower() in RESERVED_NAMES:
            raise ConfigError(
                f"{key}: {value!r} is a header the agent or the guest sends itself; choose"
                f" another name (reserved: {', '.join(sorted(RESERVED_NAMES))})"
            )
        return value

    return convert


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


def _socket_path(key: str, value: object) -> Path:
    """An absolute path short enough for a Unix socket's address (107 bytes)."""
    what = "an absolute path of at most 107 bytes"
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigError(f"{key}: must be {what} (got {value!r})")
    if len(value.encode("utf-8")) > 107:
        raise ConfigError(f"{key}: must be {what} (got {len(value.encode())} bytes)")
    return Path(value)


# TOML key -> (field name, converter)
_KEYS: Keys = {
    "controller.urls": ("controller_urls", _urls),
    "controller.certificate": ("certificate", path),
    "controller.key": ("key", path),
    "controller.ca_certificate": ("ca_certificate", path),
    # The controller caps a long poll at 300 s.
    "controller.long_poll_seconds": ("long_poll_seconds", integer(1, 300, "a number of seconds")),
    "metrics.host": ("metrics_host", host),
    "metrics.port": ("metrics_port", port),
    # With the schedule's 0.1 of jitter, a refresh always falls between 10% and 80% of the life.
    "credentials.refresh_fraction": ("refresh_fraction", number(0.2, 0.8)),
    "credentials.min_remaining_seconds": (
        "min_remaining_seconds",
        integer(60, 6 * 3600, "a number of seconds"),
    ),
    "credentials.max_concurrent_fetches": ("max_concurrent_fetches", integer(1, 256)),
    "imds.strict_proxy": ("strict_proxy", boolean),
    "imds.rate_per_second": ("rate_per_second", number(0.1, 100_000)),
    "imds.burst": ("burst", integer(1, 1_000_000)),
    "imds.port": ("imds_port", integer(1, 65535, "a port number")),
    "imds.max_connections_per_instance": ("max_connections_per_instance", integer(1, 100_000)),
    "imds.max_connections": ("max_connections", integer(16, 10_000_000)),
    "namespaces.prefix": ("namespace_prefix", _namespace_prefix),
    "user": ("user", _user),
    "imds.upstream.url": ("upstream_url", _upstream_url),
    "imds.upstream.shared_secret_file": ("upstream_shared_secret_file", path),
    "imds.upstream.timeout_seconds": ("upstream_timeout_seconds", number(0.1, 60)),
    "imds.upstream.max_body_bytes": (
        "upstream_max_body_bytes",
        integer(1024, 64 * 1024 * 1024, "a number of bytes"),
    ),
    "imds.upstream.headers.instance_id": ("upstream_instance_id_header", _header_name(False)),
    "imds.upstream.headers.account_id": ("upstream_account_id_header", _header_name(True)),
    "imds.upstream.headers.signature": ("upstream_signature_header", _header_name(False)),
    "imds.upstream.headers.forwarded_for": ("upstream_forwarded_for_header", _header_name(True)),
    "hypervisor.plug_socket": ("plug_socket", _socket_path),
}
#: The fields of the upstream metadata service's keys, by field (for the checks across them).
_UPSTREAM_KEYS = {
    field: key for key, (field, _) in _KEYS.items() if key.startswith("imds.upstream.")
}
_REQUIRED = {"controller.urls": 'urls = ["https://controller.example:8775"]'}


def agent_config_from_string(text: str, source: str = "<config>") -> AgentConfig:
    """A validated configuration from TOML text; `source` names the file in errors."""
    values = values_from_string(text, source, _KEYS, _REQUIRED)
    _check_upstream(values, source)
    return AgentConfig(**values)


def _check_upstream(values: dict[str, Any], source: str) -> None:
    """``[imds.upstream]`` is whole: a URL with a shared secret, and trusted header names
    that differ from each other (in any case)."""
    given = [field for field in values if field in _UPSTREAM_KEYS]
    if not given:
        return
    if "upstream_url" not in values:
        raise ConfigError(
            f"{source}: imds.upstream.url: required with {_UPSTREAM_KEYS[given[0]]}"
            ' (e.g. url = "http://nova-metadata.example:8775")'
        )
    if "upstream_shared_secret_file" not in values:
        raise ConfigError(
            f"{source}: imds.upstream.shared_secret_file: required with imds.upstream.url (a"
            " file root alone may read, holding the secret the upstream service checks the"
            " instance id's signature with)"
        )
    seen: dict[str, str] = {}
    for field in (
        "upstream_instance_id_header",
        "upstream_account_id_header",
        "upstream_signature_header",
        "upstream_forwarded_for_header",
    ):
        name = str(values.get(field, getattr(AgentConfig, field)))
        if not name:
            continue
        if name.lower() in seen:
            raise ConfigError(
                f"{source}: {_UPSTREAM_KEYS[field]}: {name!r} is already the name of"
                f" {seen[name.lower()]}; each trusted header needs its own"
            )
        seen[name.lower()] = _UPSTREAM_KEYS[field]


def load_agent_config(path: Path | None = None) -> AgentConfig:
    """The configuration in the file at `path` (by default /etc/rolecall/agent.toml)."""
    if path is None:
        path = DEFAULT_CONFIG_PATH
    return agent_config_from_string(read_config_text(path), str(path))


#: AgentConfig fields that are paths (or None), and the one that is a tuple, for
#: `config_from_wire`.
_PATH_FIELDS = (
    "certificate",
    "key",
    "ca_certificate",
    "upstream_shared_secret_file",
    "plug_socket",
)


def config_to_wire(config: AgentConfig) -> dict[str, Any]:
    """The configuration as JSON values, for the serving process (which reads no file)."""
    wire = asdict(config)
    for name in _PATH_FIELDS:
        if wire[name] is not None:
            wire[name] = str(wire[name])
    wire["controller_urls"] = list(config.controller_urls)
    return wire


def config_from_wire(wire: dict[str, Any]) -> AgentConfig:
    """The inverse of `config_to_wire` (the privileged process made it from a valid config)."""
    values = dict(wire)
    for name in _PATH_FIELDS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    values["controller_urls"] = tuple(values["controller_urls"])
    return AgentConfig(**values)
