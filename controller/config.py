"""The controller's configuration: TOML text to a validated, frozen `ControllerConfig`.

Parsing is pure; reading the file is the caller's business. Every error names the key at fault.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from controller.forwarded import parse_networks

DEFAULT_CONFIG_PATH = Path("/etc/rolecall/controller.toml")
#: Upper ends of the EC2 limits an operator may configure (bounded so a typo cannot unbound them).
MAX_ACCOUNT_INSTANCES = 1_000_000
MAX_NODE_CAPACITY = 100_000
MAX_API_CONNECTIONS = 1_000_000
DEFAULT_STATE_DIR = Path("/var/lib/rolecall")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and says what it must be."""


@dataclass(frozen=True)
class ControllerConfig:
    state_dir: Path = DEFAULT_STATE_DIR
    api_host: str = "127.0.0.1"
    api_port: int = 8773
    max_body_bytes: int = 1024 * 1024
    #: The most connections the public API port holds at once; None: half the descriptors the
    #: process may open, the rest kept for the node API, the metrics port and the store.
    api_max_connections: int | None = None
    #: The SQLite database file; default ``<state_dir>/rolecall.db``.
    database: Path | None = None
    node_api_host: str = "127.0.0.1"
    node_api_port: int = 8775
    #: Lifetime of instance role credentials handed to nodes.
    instance_credential_seconds: int = 6 * 3600
    #: The append-only audit log of credential issuance; default ``<state_dir>/audit.log``.
    audit_log: Path | None = None
    #: The Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` listener.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9773
    #: Reverse proxies whose X-Forwarded-For is believed for aws:SourceIp (addresses or CIDRs).
    trusted_proxies: tuple[str, ...] = ()
    #: Instances (not terminated) an account may have: RunInstances beyond is InstanceLimitExceeded.
    max_instances_per_account: int = 1000
    #: Instances (not terminated) a node may run unless enrolled with its own ``--capacity``.
    node_capacity: int = 1000

    def api_connection_limit(self, descriptors: int) -> int:
        """The public port's connection limit when the process may open ``descriptors``."""
        if self.api_max_connections is not None:
            return self.api_max_connections
        return max(16, descriptors // 2)

    @property
    def audit_log_path(self) -> Path:
        return self.audit_log if self.audit_log is not None else self.state_dir / "audit.log"

    @property
    def database_path(self) -> Path:
        return self.database if self.database is not None else self.state_dir / "rolecall.db"

    @property
    def root_credentials_path(self) -> Path:
        return self.state_dir / "root-credentials"

    @property
    def token_keys_path(self) -> Path:
        """The key ring that seals session tokens (shared by every replica)."""
        return self.state_dir / "token-keys.json"

    @property
    def accounts_dir(self) -> Path:
        """Root credentials of accounts made after the first (``account create``)."""
        return self.state_dir / "accounts"

    @property
    def ca_key_path(self) -> Path:
        """The node CA's private key (mode 0600): it signs every node's client certificate."""
        return self.state_dir / "node-ca.key"

    @property
    def ca_cert_path(self) -> Path:
        """The node CA's certificate: the node API trusts the clients it signed."""
        return self.state_dir / "node-ca.pem"

    @property
    def node_api_key_path(self) -> Path:
        """The node API server's TLS key (mode 0600)."""
        return self.state_dir / "node-api.key"

    @property
    def node_api_cert_path(self) -> Path:
        """The node API server's TLS certificate, signed by the node CA."""
        return self.state_dir / "node-api.pem"

    def with_overrides(self, **overrides: Any) -> ControllerConfig:
        """This configuration with the given fields replaced (flags override the file)."""
        known = {field.name for field in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"not configuration fields: {', '.join(sorted(unknown))}")
        chosen = {key: value for key, value in overrides.items() if value is not None}
        return replace(self, **chosen)


# TOML key -> (field name, converter)
def _path(key: str, value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty path string (got {value!r})")
    return Path(value)


def _port(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{key}: must be a port number from 0 to 65535 (got {value!r})")
    return value


def _host(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a host name or address (got {value!r})")
    return value


def _size(key: str, value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1024 <= value <= 64 * 1024 * 1024
    ):
        raise ConfigError(f"{key}: must be a byte count from 1024 to 67108864 (got {value!r})")
    return value


def _lifetime(key: str, value: object) -> int:
    low, high = 900, 36 * 3600  # the key ring keeps retired keys 36 h: tokens must not outlive them
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{key}: must be a number of seconds from {low} to {high} (got {value!r})"
        )
    return value


def _networks(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key}: must be a list of IP addresses or networks (got {value!r})")
    try:
        parse_networks(value)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None
    return tuple(value)


def _count(high: int) -> Any:
    def convert(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ConfigError(f"{key}: must be a number from 1 to {high} (got {value!r})")
        return value

    return convert


def _backend(key: str, value: object) -> str:
    if value != "sqlite":
        raise ConfigError(f'{key}: must be "sqlite" (got {value!r})')
    return "sqlite"


_KEYS = {
    "state_dir": ("state_dir", _path),
    "api.host": ("api_host", _host),
    "api.port": ("api_port", _port),
    "api.max_body_bytes": ("max_body_bytes", _size),
    "api.trusted_proxies": ("trusted_proxies", _networks),
    "api.max_connections": ("api_max_connections", _count(MAX_API_CONNECTIONS)),
    "store.backend": (None, _backend),
    "store.path": ("database", _path),
    "node_api.host": ("node_api_host", _host),
    "node_api.port": ("node_api_port", _port),
    "node_api.instance_credential_seconds": ("instance_credential_seconds", _lifetime),
    "audit.path": ("audit_log", _path),
    "metrics.host": ("metrics_host", _host),
    "metrics.port": ("metrics_port", _port),
    "ec2.max_instances_per_account": ("max_instances_per_account", _count(MAX_ACCOUNT_INSTANCES)),
    "ec2.node_capacity": ("node_capacity", _count(MAX_NODE_CAPACITY)),
}


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_from_string(text: str, source: str = "<config>") -> ControllerConfig:
    """A validated configuration from TOML text; `source` names the file in errors."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error
    values: dict[str, Any] = {}
    for key, value in _flatten(table).items():
        if key not in _KEYS:
            raise ConfigError(f"{source}: unknown key {key} (known: {', '.join(sorted(_KEYS))})")
        field_name, convert = _KEYS[key]
        converted = convert(f"{source}: {key}", value)
        if field_name is not None:
            values[field_name] = converted
    return ControllerConfig(**values)


def load_config(path: Path | None) -> ControllerConfig:
    """The configuration from `path`, or from the default file if it exists, or the defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return ControllerConfig()
        path = DEFAULT_CONFIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error.strerror}") from error
    return config_from_string(text, str(path))
