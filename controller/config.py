"""The controller's configuration: TOML text to a validated, frozen `ControllerConfig`.

Parsing is pure; reading the file is the caller's business. Every error names the key at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.tomlconfig import (
    ConfigError,
    Converter,
    Keys,
    host,
    integer,
    path,
    port,
    read_config_text,
    values_from_string,
)
from controller.ec2.network import DEFAULT_SUBNET, parse_subnet
from controller.forwarded import parse_networks

if TYPE_CHECKING:
    from controller.awsmanaged import AwsManagedCatalog

__all__ = ["ConfigError", "ControllerConfig", "config_from_string", "load_config"]

DEFAULT_CONFIG_PATH = Path("/etc/rolecall/controller.toml")
#: Upper ends of the EC2 limits an operator may configure (bounded so a typo cannot unbound them).
MAX_ACCOUNT_INSTANCES = 1_000_000
MAX_NODE_CAPACITY = 100_000
MAX_ACCOUNT_KEY_PAIRS = 1_000_000
MAX_API_CONNECTIONS = 1_000_000
DEFAULT_STATE_DIR = Path("/var/lib/rolecall")


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
    #: ``sqlite`` (the embedded default) or ``postgresql`` (several controllers on one database).
    store_backend: str = "sqlite"
    #: The PostgreSQL libpq connection string or URI (postgresql only; its password belongs in
    #: a passfile, and is never shown: see `controller.store.postgresql.describe_dsn`).
    store_dsn: str | None = field(default=None, repr=False)
    #: Connections the PostgreSQL store keeps at most.
    store_pool_size: int = 4
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
    #: Where instances' private addresses come from unless their node has its own ``--subnet``.
    subnet: str = DEFAULT_SUBNET
    #: Key pairs an account may hold: ImportKeyPair or CreateKeyPair beyond is KeyPairLimitExceeded.
    max_key_pairs_per_account: int = 5000
    #: The operator's AWS-managed policies (`controller.awsmanaged`); None: none.
    aws_managed_policies: Path | None = None

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
    def identity_key_path(self) -> Path:
        """The instance identity key (mode 0600): it signs instances' identity documents."""
        return self.state_dir / "instance-identity.key"

    @property
    def identity_cert_path(self) -> Path:
        """The instance identity certificate: verifiers (Vault, SPIRE) check signatures with it."""
        return self.state_dir / "instance-identity.pem"

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


def _networks(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key}: must be a list of IP addresses or networks (got {value!r})")
    try:
        parse_networks(value)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None
    return tuple(value)


def _subnet(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            f'{key}: must be an IPv4 CIDR block such as "10.0.0.0/16" (got {value!r})'
        )
    try:
        return str(parse_subnet(value))
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None


def _backend(key: str, value: object) -> str:
    if value not in ("sqlite", "postgresql"):
        raise ConfigError(f'{key}: must be "sqlite" or "postgresql" (got {value!r})')
    return str(value)


def _dsn(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{key}: must be a libpq connection string or a postgresql:// URI, such as"
            ' "host=db1 dbname=rolecall user=rolecall"'
        )
    from controller.store.postgresql import check_dsn

    problem = check_dsn(value)
    if problem is not None:
        raise ConfigError(f"{key}: {problem}")
    return value


def _store_keys(values: dict[str, Any], source: str) -> None:
    """The [store] keys that only make sense together."""
    backend = values.get("store_backend", "sqlite")
    if backend == "postgresql":
        if "store_dsn" not in values:
            raise ConfigError(
                f'{source}: store.dsn: required with store.backend = "postgresql" (e.g.'
                ' "host=db1 dbname=rolecall user=rolecall")'
            )
        if "database" in values:
            raise ConfigError(
                f'{source}: store.path: not used with store.backend = "postgresql" (the'
                " database is store.dsn's)"
            )
    else:
        for key, field_name in (("store.dsn", "store_dsn"), ("store.pool_size", "store_pool_size")):
            if field_name in values:
                raise ConfigError(
                    f'{source}: {key}: only for store.backend = "postgresql" (the store is SQLite)'
                )


# The key ring keeps retired keys 36 h: tokens must not outlive them.
_LIFETIME = integer(900, 36 * 3600, "a number of seconds")
_SIZE = integer(1024, 64 * 1024 * 1024, "a byte count")


def _count(high: int) -> Converter:
    return integer(1, high, "a number")


# TOML key -> (field name, or None for a key only checked, converter)
_KEYS: Keys = {
    "state_dir": ("state_dir", path),
    "api.host": ("api_host", host),
    "api.port": ("api_port", port),
    "api.max_body_bytes": ("max_body_bytes", _SIZE),
    "api.trusted_proxies": ("trusted_proxies", _networks),
    "api.max_connections": ("api_max_connections", _count(MAX_API_CONNECTIONS)),
    "store.backend": ("store_backend", _backend),
    "store.path": ("database", path),
    "store.dsn": ("store_dsn", _dsn),
    "store.pool_size": ("store_pool_size", integer(1, 1000, "a number of connections")),
    "node_api.host": ("node_api_host", host),
    "node_api.port": ("node_api_port", port),
    "node_api.instance_credential_seconds": ("instance_credential_seconds", _LIFETIME),
    "audit.path": ("audit_log", path),
    "metrics.host": ("metrics_host", host),
    "metrics.port": ("metrics_port", port),
    "ec2.max_instances_per_account": ("max_instances_per_account", _count(MAX_ACCOUNT_INSTANCES)),
    "ec2.node_capacity": ("node_capacity", _count(MAX_NODE_CAPACITY)),
    "ec2.subnet": ("subnet", _subnet),
    "ec2.max_key_pairs_per_account": (
        "max_key_pairs_per_account",
        _count(MAX_ACCOUNT_KEY_PAIRS),
    ),
    "iam.aws_managed_policies": ("aws_managed_policies", path),
}


def config_from_string(text: str, source: str = "<config>") -> ControllerConfig:
    """A validated configuration from TOML text; `source` names the file in errors."""
    values = values_from_string(text, source, _KEYS)
    _store_keys(values, source)
    return ControllerConfig(**values)


def load_aws_managed_policies(config: ControllerConfig) -> AwsManagedCatalog:
    """The AWS-managed policies of ``iam.aws_managed_policies`` (none when unset); a bad
    directory or file is a ConfigError naming the key and the file. Imported here: reading them
    needs the policy parser, which the configuration alone does not."""
    from controller.awsmanaged import AwsManagedCatalog, CatalogError, load_catalog

    if config.aws_managed_policies is None:
        return AwsManagedCatalog()
    try:
        return load_catalog(config.aws_managed_policies)
    except CatalogError as error:
        raise ConfigError(f"iam.aws_managed_policies: {error}") from None


def load_config(path: Path | None) -> ControllerConfig:
    """The configuration from `path`, or from the default file if it exists, or the defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return ControllerConfig()
        path = DEFAULT_CONFIG_PATH
    return config_from_string(read_config_text(path), str(path))
