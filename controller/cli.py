"""``rolecall-controller``: initialise a state directory, then serve the API."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import socket
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from controller.accounts import (
    ACCOUNT_ID,
    Bootstrap,
    create_account,
    ensure_first_account,
    new_account_id,
)
from controller.config import MAX_NODE_CAPACITY, ConfigError, ControllerConfig, load_config
from controller.ec2.common import INSTANCE_ID
from controller.ec2.network import parse_subnet
from controller.identity import IdentityError, IdentitySigner, create_identity_key
from controller.identityfiles import load_identity_signer
from controller.keyring import (
    KeyRingError,
    StateDirectoryError,
    check_state_directory,
    check_state_owner,
    ensure_key_ring,
    load_key_ring,
    revoke_key_ring,
    rotate_key_ring,
)
from controller.nodeca import (
    DEFAULT_SERVER_NAMES,
    NODE_NAME,
    NodeCAError,
    check_node_name,
    check_server_name,
    create_ca,
    create_server_certificate,
    issue_node_certificate,
    load_certificate,
    server_certificate_names,
)
from controller.shared import (
    IDENTITY_CERT,
    IDENTITY_KEY,
    NODE_CA_CERT,
    NODE_CA_KEY,
    ensure_key_ring_in,
    ensure_pair_in,
    load_key_ring_in,
    load_pair_in,
    revoke_key_ring_in,
    rotate_key_ring_in,
)
from controller.store.base import Conflict, Store, StoreError
from controller.store.factory import open_store, store_location
from controller.store.records import REGION, Node
from controller.tokens import KeyRing
from controller.xmlout import format_time

DEFAULT_PROFILE = "rolecall"
#: Where agents reach the node API unless told otherwise.
DEFAULT_NODE_API_PORT = 8775


class CommandError(Exception):
    """A command cannot go on; its message is printed as one line on stderr."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolecall-controller",
        description="RoleCall controller: IAM, STS and EC2 over the AWS Query API.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML configuration file (default /etc/rolecall/controller.toml if it exists)",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="state directory (default /var/lib/rolecall)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init", help="create the state directory, database, account and root key"
    )
    init.add_argument("--account-id", help="the account's 12-digit id (default: random)")
    init.add_argument(
        "--account-name", default="default", help="the account's name (default: default)"
    )
    init.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"profile name in the credentials file (default: {DEFAULT_PROFILE})",
    )
    init.add_argument(
        "--node-api-name",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address agents use to reach the node API, for its TLS certificate;"
        " may be repeated (default: localhost, 127.0.0.1 and this host's name)",
    )

    account = commands.add_parser("account", help="create and list accounts")
    account_commands = account.add_subparsers(
        dest="account_command", metavar="ACTION", required=True
    )
    create = account_commands.add_parser("create", help="a new account with its own root key")
    create.add_argument("name", help="the account's name")
    create.add_argument("--account-id", help="the account's 12-digit id (default: random)")
    create.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"profile name in the credentials file (default: {DEFAULT_PROFILE})",
    )
    account_commands.add_parser("list", help="the accounts, one per line")

    rotate = commands.add_parser(
        "rotate-token-key",
        help="seal new session tokens with a new key; old keys verify until their tokens expire",
    )
    rotate.add_argument(
        "--revoke-previous",
        action="store_true",
        help="emergency: drop every other key at once, so every session token issued before"
        " (instance credentials too) stops working",
    )

    enroll = commands.add_parser(
        "enroll-node", help="issue a node its client certificate for the node API"
    )
    enroll.add_argument("name", metavar="NAME", help="the node's name (its host name)")
    enroll.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for node.key, node.pem and ca.pem (created if missing)",
    )
    enroll.add_argument(
        "--force",
        action="store_true",
        help="issue an enrolled node a new certificate (its old one is refused from then on),"
        " replacing the files in DIR",
    )
    enroll.add_argument(
        "--capacity",
        type=_capacity,
        metavar="N",
        help="the most instances the node may run (default: ec2.node_capacity of the"
        " configuration); with --force, changes it",
    )
    enroll.add_argument(
        "--subnet",
        type=_subnet,
        metavar="CIDR",
        help="the IPv4 block its instances' private addresses come from (default: ec2.subnet"
        " of the configuration); with --force, changes it for instances launched from then on",
    )
    retire = commands.add_parser(
        "retire-node", help="refuse a node on the node API and place no instances on it"
    )
    retire.add_argument("name", metavar="NAME", help="the node's name")
    commands.add_parser(
        "nodes", help="the enrolled nodes with their instance counts and last contact"
    )

    audit = commands.add_parser(
        "audit",
        help="print the audit records of credential issuance (JSON lines, oldest first): the"
        " database's audit_log table on PostgreSQL, the audit log file on SQLite",
    )
    audit.add_argument(
        "--since",
        type=_since,
        metavar="TIME",
        help="only records at or after TIME (ISO 8601, e.g. 2024-05-01T12:00:00Z)",
    )
    audit.add_argument(
        "--instance", type=_instance_id, metavar="ID", help="only records of this instance"
    )
    commands.add_parser(
        "identity-certificate",
        help="print the certificate that verifies instances' signed identity documents (PEM),"
        " for Vault, SPIRE or openssl",
    )
    commands.add_parser(
        "check-config",
        help="check the configuration and the state directory as serve would, then exit"
        " (0: serve would start)",
    )
    migrate = commands.add_parser(
        "migrate-store",
        help="copy the SQLite store of the state directory into a PostgreSQL database (run it"
        " again: it copies only what is new); verified by per-table counts and checksums",
    )
    migrate.add_argument(
        "--to",
        required=True,
        metavar="DSN",
        help="the PostgreSQL database: a libpq connection string or a postgresql:// URI (put a"
        " password in a passfile, not here)",
    )
    serve = commands.add_parser("serve", help="run the controller until SIGTERM or SIGINT")
    serve.add_argument("--host", help="address of the public API (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="port of the public API (default 8773; 0 picks a free one)"
    )
    serve.add_argument("--node-api-host", help="address of the node API (default 127.0.0.1)")
    serve.add_argument(
        "--node-api-port",
        type=int,
        help="port of the node API (default 8775; 0 picks a free one)",
    )
    serve.add_argument(
        "--metrics-host", help="address of /metrics, /healthz and /readyz (default 127.0.0.1)"
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="port of /metrics, /healthz and /readyz (default 9773; 0 picks a free one)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config).with_overrides(state_dir=args.state_dir)
        check_state_owner(config.state_dir)
        if args.command == "init":
            return init(
                config, args.account_id, args.account_name, args.profile, args.node_api_name
            )
        if args.command == "account" and args.account_command == "create":
            return account_create(config, args.name, args.account_id, args.profile)
        if args.command == "account":
            return account_list(config)
        if args.command == "rotate-token-key":
            return rotate_token_key(config, revoke=args.revoke_previous)
        if args.command == "enroll-node":
            return enroll_node(config, args.name, args.out, args.force, args.capacity, args.subnet)
        if args.command == "retire-node":
            return retire_node(config, args.name)
        if args.command == "nodes":
            return list_nodes(config)
        if args.command == "check-config":
            return check_config(config)
        if args.command == "audit":
            return audit_records(config, args.since, args.instance)
        if args.command == "migrate-store":
            return migrate_store(config, args.to)
        if args.command == "identity-certificate":
            return identity_certificate(config)
        for flag, port in (
            ("--port", args.port),
            ("--node-api-port", args.node_api_port),
            ("--metrics-port", args.metrics_port),
        ):
            if port is not None and not 0 <= port <= 65535:
                parser.error(f"argument {flag}: must be from 0 to 65535 (got {port})")
        config = config.with_overrides(
            api_host=args.host,
            api_port=args.port,
            node_api_host=args.node_api_host,
            node_api_port=args.node_api_port,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
        )
        return serve(config)
    except (
        ConfigError,
        CommandError,
        StoreError,
        KeyRingError,
        StateDirectoryError,
        NodeCAError,
        IdentityError,
    ) as error:
        print(f"rolecall-controller: {error}", file=sys.stderr)
        return 1


def init(
    config: ControllerConfig,
    account_id: str | None,
    account_name: str,
    profile: str,
    node_api_names: list[str] | None = None,
) -> int:
    if account_id is not None and not ACCOUNT_ID.fullmatch(account_id):
        raise CommandError(f"--account-id must be 12 digits (got {account_id!r})")
    names = node_api_names or _default_node_api_names()
    for name in names:
        check_server_name(name, "--node-api-name")
    state_dir = config.state_dir
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = state_dir.stat()
        if status.st_uid == os.geteuid() and status.st_mode & 0o077:
            # It will hold secret keys: serve refuses it open to others, so make it private now.
            state_dir.chmod(0o700)
            print(f"Made {state_dir} private to its owner (mode 0700): it holds secret keys.")
    except OSError as error:
        raise CommandError(
            f"cannot create the state directory {state_dir}: {error.strerror}"
        ) from error
    if _shared(config):
        return _init_shared(config, account_id, account_name, profile, names, node_api_names)
    store = open_store(config)
    try:
        with store.transaction() as tx:
            bootstrap = ensure_first_account(
                tx, account_id, account_name, format_time(datetime.now(UTC))
            )
        version = store.schema_version()
    finally:
        store.close()
    account = bootstrap.account
    # Where the account lives: the state directory's SQLite file, or the shared database.
    where = (
        f"the store ({store_location(config)})"
        if config.store_backend == "postgresql"
        else str(state_dir)
    )
    if bootstrap.root_key is None and account_id not in (None, account.account_id):
        raise CommandError(
            f"{where} is already initialised for account {account.account_id};"
            f" it was not changed (asked for {account_id})"
        )
    now = datetime.now(UTC)
    ring = ensure_key_ring(config.token_keys_path, now)
    added: list[str] = []
    if _ensure_node_ca(config, now):
        added.append("the node CA")
    if _ensure_node_api_certificate(config, names, now):
        added.append("the node API certificate")
    if _ensure_identity_key(config, now):
        added.append("the instance identity key")
    server_names = server_certificate_names(
        _read(config.node_api_cert_path, "the node API certificate")
    )
    if "the node API certificate" not in added:
        _check_node_api_names(config, node_api_names, server_names)
    shown_names = ", ".join(server_names)
    credentials = config.root_credentials_path
    if bootstrap.root_key is not None:
        _write_private(credentials, _credentials_text(bootstrap, profile))
        print(f"Initialised RoleCall in {where} (store schema version {version}).")
        print(f"  account     {account.account_id} ({account.name})")
        key_id = bootstrap.root_key.access_key_id
        print(f"  root key    {key_id}, in {credentials} (profile {profile})")
        print(f"  token key   {ring.active_id}, in {config.token_keys_path}")
        print(f"  node CA     in {config.ca_cert_path} (its key in {config.ca_key_path})")
        print(f"  node API    certificate for {shown_names}, in {config.node_api_cert_path}")
        print(
            f"  identity    certificate in {config.identity_cert_path}"
            f" (its key in {config.identity_key_path})"
        )
    else:
        if added:
            what = " and ".join(added)
            print(f"RoleCall is already initialised in {where}; added {what}.")
        else:
            print(f"RoleCall is already initialised in {where}; nothing was changed.")
        print(f"  account     {account.account_id} ({account.name})")
        print(f"  root key    in {credentials}")
        print(f"  node CA     in {config.ca_cert_path}")
        print(f"  node API    certificate for {shown_names}, in {config.node_api_cert_path}")
        print(f"  identity    certificate in {config.identity_cert_path}")
    print("Start the controller:")
    print(f"  rolecall-controller --state-dir {state_dir} serve")
    print("Enroll each hypervisor for the node API:")
    print(f"  rolecall-controller --state-dir {state_dir} enroll-node NAME --out DIR")
    print("Give verifiers of instance identity documents (Vault, SPIRE) the certificate from:")
    print(f"  rolecall-controller --state-dir {state_dir} identity-certificate")
    print("Then use it with the AWS CLI:")
    print(
        f"  AWS_SHARED_CREDENTIALS_FILE={credentials} aws --profile {profile} --region us-east-1"
        f" --endpoint-url http://{config.api_host}:{config.api_port} iam list-roles"
    )
    return 0


def _check_node_api_names(
    config: ControllerConfig, node_api_names: list[str] | None, server_names: list[str]
) -> None:
    """--node-api-name given for a node API certificate that exists: it must name them all."""
    missing = [name for name in node_api_names or () if name not in server_names]
    if missing:
        raise CommandError(
            f"the node API certificate {config.node_api_cert_path} exists already and is not"
            f" for {', '.join(missing)}; it was not changed (to issue a new one, remove it"
            f" and {config.node_api_key_path.name}, then run init again)"
        )


def _credentials_text(bootstrap: Bootstrap, profile: str) -> str:
    account, key = bootstrap.account, bootstrap.root_key
    assert key is not None
    return (
        f"# RoleCall root credentials of account {account.account_id} ({account.name}).\n"
        "# Keep this file secret: it can do everything in the account.\n"
        f"[{profile}]\n"
        f"aws_access_key_id = {key.access_key_id}\n"
        f"aws_secret_access_key = {key.secret_access_key}\n"
    )


def _open_store(config: ControllerConfig) -> Store:
    """The configured store, once `init` has made it (CommandError saying to run it if not)."""
    _check_initialised(config)
    store = open_store(config)
    if config.store_backend == "postgresql":
        try:
            with store.transaction() as tx:
                initialised = bool(tx.list_accounts())
        except BaseException:
            store.close()
            raise
        if not initialised:
            store.close()
            raise CommandError(
                f"the store ({store_location(config)}) is not initialised (no account);"
                " run: rolecall-controller init"
            )
    return store


def _check_initialised(config: ControllerConfig) -> None:
    """An SQLite store must exist already (opening would create an empty one)."""
    if config.store_backend == "sqlite" and not config.database_path.exists():
        raise CommandError(
            f"{config.state_dir} is not initialised (no {config.database_path.name});"
            f" run: rolecall-controller --state-dir {config.state_dir} init"
        )


def account_create(
    config: ControllerConfig, name: str, account_id: str | None, profile: str
) -> int:
    """A further account, with its own root key in ``accounts/ID-root-credentials``."""
    if account_id is not None and not ACCOUNT_ID.fullmatch(account_id):
        raise CommandError(f"--account-id must be 12 digits (got {account_id!r})")
    store = _open_store(config)
    try:
        with store.transaction() as tx:
            chosen = account_id or new_account_id()
            if tx.get_account(chosen) is not None:
                raise CommandError(f"account {chosen} exists already; nothing was changed")
            bootstrap = create_account(tx, chosen, name, format_time(datetime.now(UTC)))
            config.accounts_dir.mkdir(mode=0o700, exist_ok=True)
            path = config.accounts_dir / f"{chosen}-root-credentials"
            _write_private(path, _credentials_text(bootstrap, profile))
    except Conflict as error:
        raise CommandError(f"account {account_id} exists already; nothing was changed") from error
    finally:
        store.close()
    print(f"Created account {chosen} ({name}).")
    print(f"  root key    in {path} (profile {profile})")
    return 0


def account_list(config: ControllerConfig) -> int:
    store = _open_store(config)
    try:
        with store.transaction() as tx:
            accounts = tx.list_accounts()
    finally:
        store.close()
    for account in accounts:
        print(f"{account.account_id}  {account.created}  {account.name}")
    return 0


def rotate_token_key(config: ControllerConfig, *, revoke: bool = False) -> int:
    """New session tokens are sealed with a new key; old keys keep verifying what they sealed,
    unless ``revoke``: then they are dropped, and every token they sealed is invalid."""
    if _shared(config):
        return _rotate_shared(config, revoke=revoke)
    if revoke:
        ring = revoke_key_ring(config.token_keys_path, datetime.now(UTC))
        print(f"Session tokens are now sealed with key {ring.active_id}; every other key is gone.")
        print("Running controllers refuse the tokens sealed before within a minute.")
        print(
            "Instance credentials are among them: restart the agents (systemctl restart"
            " rolecall-agent) so that guests get new ones at once."
        )
        return 0
    ring = rotate_key_ring(config.token_keys_path, datetime.now(UTC))
    print(f"Session tokens are now sealed with key {ring.active_id}.")
    for key in ring.keys:
        if key.key_id != ring.active_id and key.retire_after is not None:
            print(f"  key {key.key_id} still verifies until {format_time(key.retire_after)}")
    print("Running controllers pick the new key up within a minute.")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only, replacing any older one atomically."""
    _write_file(path, text.encode("utf-8"), 0o600)


def _write_file(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Put ``data`` at ``path`` whole, with ``mode`` less the umask.

    A synced temporary file is renamed over the path (``replace``), or hard-linked to it, which
    fails if the path exists: a file that must never be replaced (the CA key) is not, even when two
    commands race.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet; CommandError if it does or cannot be written."""
    try:
        _write_file(path, data, mode, replace=False)
    except FileExistsError:
        raise CommandError(f"{path} was created meanwhile; it was not replaced") from None
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CommandError(f"cannot read {what} {path}: {error.strerror}") from None


# --- nodes ------------------------------------------------------------------------------------


def _default_node_api_names() -> list[str]:
    """localhost, 127.0.0.1 and this host's name (when it is a usable DNS name)."""
    names = list(DEFAULT_SERVER_NAMES)
    host = socket.gethostname().lower()
    if NODE_NAME.fullmatch(host) and host not in names:
        names.append(host)
    return names


def _ensure_pair(key_path: Path, cert_path: Path, what: str) -> bool:
    """Whether neither file exists (so both are to be made); an error when only one does."""
    have_key, have_cert = key_path.exists(), cert_path.exists()
    if have_key and have_cert:
        return False
    if have_key or have_cert:
        present, missing = (key_path, cert_path) if have_key else (cert_path, key_path)
        raise CommandError(
            f"{what}: {present} exists but {missing} does not; restore {missing},"
            f" or remove {present} to make a new one"
        )
    return True


def _ensure_node_ca(config: ControllerConfig, now: datetime) -> bool:
    """Create the node CA unless it exists; whether it was created. Never replaces one."""
    if not _ensure_pair(config.ca_key_path, config.ca_cert_path, "the node CA"):
        return False
    key_pem, cert_pem = create_ca(now)
    # The key first: a certificate without its key could never sign anything.
    _write_new(config.ca_key_path, key_pem, 0o600)
    _write_new(config.ca_cert_path, cert_pem, 0o644)
    return True


def _ensure_node_api_certificate(
    config: ControllerConfig,
    names: list[str],
    now: datetime,
    node_ca: tuple[bytes, bytes] | None = None,
) -> bool:
    """Issue the node API's server certificate unless it exists; whether it was issued. It is
    signed by ``node_ca`` (key and certificate PEM; default: the node CA's files)."""
    key_path, cert_path = config.node_api_key_path, config.node_api_cert_path
    if not _ensure_pair(key_path, cert_path, "the node API certificate"):
        return False
    ca_key_pem, ca_cert_pem = node_ca or _read_node_ca(config)
    key_pem, cert_pem = create_server_certificate(ca_key_pem, ca_cert_pem, now, names)
    _write_new(key_path, key_pem, 0o600)
    _write_new(cert_path, cert_pem, 0o644)
    return True


def _ensure_identity_key(config: ControllerConfig, now: datetime) -> bool:
    """Create the instance identity key and certificate unless they exist; whether they were
    created. Never replaces one: verifiers have pinned its certificate."""
    key_path, cert_path = config.identity_key_path, config.identity_cert_path
    if not _ensure_pair(key_path, cert_path, "the instance identity"):
        return False
    key_pem, cert_pem = create_identity_key(now, REGION)
    _write_new(key_path, key_pem, 0o600)
    _write_new(cert_path, cert_pem, 0o644)
    return True


def identity_certificate(config: ControllerConfig) -> int:
    """Print the instance identity certificate (PEM), checked to be the key's: what an operator
    gives Vault, SPIRE or openssl to verify identity documents with. Never the key."""
    signer = _identity_signer(config)
    if signer is None:
        raise CommandError(
            f"{config.state_dir} has no instance identity key ({config.identity_key_path.name});"
            f" run: rolecall-controller --state-dir {config.state_dir} init"
        )
    sys.stdout.write(signer.certificate_pem.decode("ascii"))
    return 0


def _read_node_ca(config: ControllerConfig) -> tuple[bytes, bytes]:
    if _shared(config):
        store = _open_store(config)
        try:
            pair = load_pair_in(store, (NODE_CA_KEY, NODE_CA_CERT))
        finally:
            store.close()
        if pair is None:
            raise CommandError(
                "the database holds no node CA; run: rolecall-controller init (on any"
                " controller host)"
            )
        return pair
    if not config.ca_key_path.exists() or not config.ca_cert_path.exists():
        raise CommandError(
            f"{config.state_dir} has no node CA ({config.ca_cert_path.name});"
            f" run: rolecall-controller --state-dir {config.state_dir} init"
        )
    return _read(config.ca_key_path, "the node CA key"), _read(
        config.ca_cert_path, "the node CA certificate"
    )


def _node_api_url(config: ControllerConfig) -> tuple[str, str | None]:
    """The URL agents should use, from the address the node API is configured to listen on
    and the names its certificate holds; and what an operator must change first, if anything."""
    if not config.node_api_cert_path.exists():
        raise CommandError(
            f"{config.state_dir} has no node API certificate ({config.node_api_cert_path.name});"
            f" run: rolecall-controller --state-dir {config.state_dir} init"
        )
    names = server_certificate_names(_read(config.node_api_cert_path, "the node API certificate"))
    loopback = {"localhost", "127.0.0.1", "::1"}
    port = config.node_api_port or DEFAULT_NODE_API_PORT
    listening = config.node_api_host
    note = None
    if _unspecified(listening):
        host = next((name for name in names if name not in loopback), names[0] if names else "")
    else:
        host = listening
        if listening in loopback or listening.startswith("127."):
            note = (
                f"the node API listens on {listening}:{port} (node_api.host), which only this"
                " machine reaches: for nodes elsewhere set node_api.host in controller.toml to an"
                " address they reach, and put it in the URL above"
            )
        elif listening not in names:
            note = (
                f"the node API certificate does not name {listening}, so agents will refuse it:"
                f" issue one that does with rolecall-controller init --node-api-name {listening}"
                " (after moving node-api.pem and node-api.key aside)"
            )
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}", note


def _unspecified(host: str) -> bool:
    """Whether ``host`` is a wildcard address (the node API then listens on every address)."""
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name


_NODE_FILES = ("node.key", "node.pem", "ca.pem")


def _capacity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_NODE_CAPACITY:
        raise argparse.ArgumentTypeError(
            f"must be a number of instances from 1 to {MAX_NODE_CAPACITY} (got {text!r})"
        )
    return value


def _subnet(text: str) -> str:
    try:
        return str(parse_subnet(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def enroll_node(
    config: ControllerConfig,
    name: str,
    out: Path,
    force: bool,
    capacity: int | None = None,
    subnet: str | None = None,
) -> int:
    """Issue ``name`` a client certificate, write it with its key and the CA to ``out``, and
    record its serial: the node API accepts only the certificate recorded last. ``capacity``:
    the most instances it may run (None: the configuration's ``ec2.node_capacity``)."""
    check_node_name(name)
    store = _open_store(config)
    try:
        ca_key_pem, ca_cert_pem = _read_node_ca(config)
        url, note = _node_api_url(config)
        now = datetime.now(UTC)
        with store.transaction() as tx:
            existing = tx.get_node(name)
            if existing is not None and existing.retired is None and not force:
                raise CommandError(
                    f"node {name} is enrolled already; nothing was changed"
                    " (--force issues it a new certificate and refuses the old one)"
                )
            paths = [out / file_name for file_name in _NODE_FILES]
            if not force:
                taken = [str(path) for path in paths if os.path.lexists(path)]
                if taken:
                    raise CommandError(
                        f"{', '.join(taken)} exist already; nothing was changed"
                        " (choose another --out directory, or --force to replace them)"
                    )
            key_pem, cert_pem, serial = issue_node_certificate(ca_key_pem, ca_cert_pem, name, now)
            try:
                out.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as error:
                raise CommandError(f"cannot create --out {out}: {error.strerror}") from None
            key_path, cert_path, ca_path = paths
            # Written inside the transaction: if a file cannot be written, nothing is recorded.
            for path, data, mode in (
                (key_path, key_pem, 0o600),
                (cert_path, cert_pem, 0o644),
                (ca_path, ca_cert_pem, 0o644),
            ):
                try:
                    _write_file(path, data, mode)
                except OSError as error:
                    raise CommandError(f"cannot write {path}: {error.strerror}") from None
            if existing is None:
                tx.insert_node(
                    Node(
                        name=name,
                        certificate_serial=serial,
                        enrolled=format_time(now),
                        retired=None,
                        last_contact=None,
                        revision=0,
                        capacity=capacity,
                        subnet=subnet,
                    )
                )
            else:
                # The revision never goes back: the node's agent may be polling with it.
                tx.update_node(
                    replace(
                        existing,
                        certificate_serial=serial,
                        retired=None,
                        capacity=existing.capacity if capacity is None else capacity,
                        subnet=existing.subnet if subnet is None else subnet,
                    )
                )
    except Conflict as error:
        raise CommandError(f"node {name} was enrolled meanwhile; nothing was recorded") from error
    finally:
        store.close()
    expires = load_certificate(cert_pem).not_valid_after_utc
    if existing is None:
        print(f"Enrolled node {name} (certificate serial {serial}).")
    elif existing.retired is not None:
        print(f"Enrolled node {name} again (it was retired at {existing.retired});")
        print(f"  its new certificate has serial {serial}.")
    else:
        print(f"Issued node {name} a new certificate (serial {serial});")
        print(f"  its old one (serial {existing.certificate_serial}) is refused from now on.")
    print(f"  key          {key_path.resolve()} (secret: copy it to the node only)")
    print(f"  certificate  {cert_path.resolve()} (valid until {format_time(expires)})")
    print(f"  CA           {ca_path.resolve()}")
    print(f"Configure the agent on {name} with (paths where the files are on the node):")
    print("  [controller]")
    print(f'  urls = ["{url}"]')
    print(f'  certificate = "{cert_path.resolve()}"')
    print(f'  key = "{key_path.resolve()}"')
    print(f'  ca_certificate = "{ca_path.resolve()}"')
    if note is not None:
        print(f"Before that works: {note}.")
    return 0


def retire_node(config: ControllerConfig, name: str) -> int:
    """Mark a node retired: the node API refuses it and no instance is placed on it again."""
    check_node_name(name)
    store = _open_store(config)
    try:
        with store.transaction() as tx:
            node = tx.get_node(name)
            if node is None:
                raise CommandError(
                    f"there is no node {name};"
                    f" see: rolecall-controller --state-dir {config.state_dir} nodes"
                )
            if node.retired is None:
                tx.update_node(replace(node, retired=format_time(datetime.now(UTC))))
            placed = tx.active_instance_counts().get(name, 0)
    finally:
        store.close()
    if node.retired is not None:
        print(f"Node {name} was retired already, at {node.retired}; nothing was changed.")
    else:
        print(f"Retired node {name}: the node API refuses it and no instance is placed on it.")
    if placed:
        print(
            f"  {placed} instance(s) not terminated are still placed on it; their agent can no"
            " longer fetch their credentials."
        )
    return 0


def list_nodes(config: ControllerConfig) -> int:
    """A table of the nodes: state, instances not terminated, last contact, enrollment."""
    store = _open_store(config)
    try:
        with store.transaction() as tx:
            nodes = tx.list_nodes()
            counts = tx.active_instance_counts()
    finally:
        store.close()
    if not nodes:
        print("No node is enrolled; enroll one with:")
        print(f"  rolecall-controller --state-dir {config.state_dir} enroll-node NAME --out DIR")
        return 0
    rows = [("NAME", "STATE", "INSTANCES", "CAPACITY", "SUBNET", "LAST CONTACT", "ENROLLED")]
    for node in nodes:
        rows.append(
            (
                node.name,
                "active" if node.retired is None else "retired",
                str(counts.get(node.name, 0)),
                str(node.capacity or config.node_capacity),
                node.subnet or config.subnet,
                node.last_contact or "never",
                node.enrolled,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def check_config(config: ControllerConfig) -> int:
    """What serve needs, checked without serving: the state directory (owner, mode), the store,
    the token key ring, the node API's certificate and CA, and the instance identity key (when
    there is one). Reads; writes nothing (a PostgreSQL store is migrated, as serve would)."""
    check_state_directory(config.state_dir)
    _check_initialised(config)
    if config.store_backend == "postgresql":
        _open_store(config).close()  # reachable, at this schema (or migrated), initialised
    ring = _load_key_ring(config)
    _read_node_ca(config)
    if not config.node_api_cert_path.exists():
        raise CommandError(
            f"{config.state_dir} has no node API certificate ({config.node_api_cert_path.name});"
            f" run: rolecall-controller --state-dir {config.state_dir} init"
        )
    signer = _identity_signer(config)
    from controller.config import load_aws_managed_policies

    aws_managed = load_aws_managed_policies(config)
    print(
        f"rolecall-controller: configuration OK: state {config.state_dir}, store"
        f" {store_location(config)}, token key"
        f" {ring.active_id}, public API {config.api_host}:{config.api_port}, node API"
        f" {config.node_api_host}:{config.node_api_port}, metrics"
        f" {config.metrics_host}:{config.metrics_port}, AWS-managed policies"
        f" {len(aws_managed)}"
    )
    if signer is None:
        print(
            f"rolecall-controller: no instance identity key ({config.identity_key_path}):"
            " serve starts, but instances get no signed identity documents until init makes"
            " one"
        )
    return 0


# --- several controllers on one PostgreSQL -----------------------------------------------------


def _shared(config: ControllerConfig) -> bool:
    """Whether the key ring, node CA, identity and audit log are in the database (PostgreSQL,
    shared by every controller) rather than files in the state directory (SQLite)."""
    return config.store_backend == "postgresql"


def _load_key_ring(config: ControllerConfig) -> KeyRing:
    if not _shared(config):
        return load_key_ring(config.token_keys_path)
    store = _open_store(config)
    try:
        return load_key_ring_in(store)
    finally:
        store.close()


def _identity_signer(config: ControllerConfig) -> IdentitySigner | None:
    """The instance identity signer: from its files, or from the database when shared."""
    if not _shared(config):
        return load_identity_signer(config.identity_key_path, config.identity_cert_path)
    store = _open_store(config)
    try:
        pair = load_pair_in(store, (IDENTITY_KEY, IDENTITY_CERT))
    finally:
        store.close()
    return None if pair is None else IdentitySigner(*pair)


def _init_shared(
    config: ControllerConfig,
    account_id: str | None,
    account_name: str,
    profile: str,
    names: list[str],
    node_api_names: list[str] | None,
) -> int:
    """``init`` on PostgreSQL: the account, key ring, node CA and identity are made once, in
    the database, by whichever host runs it first (taken from this state directory's files if
    it has them: a cloud moved from SQLite); every host gets its own node API certificate, from
    the shared CA, and the first its root credentials file."""
    store = open_store(config)
    try:
        now = datetime.now(UTC)
        with store.transaction() as tx:
            bootstrap = ensure_first_account(tx, account_id, account_name, format_time(now))
        version = store.schema_version()
        account = bootstrap.account
        if bootstrap.root_key is None and account_id not in (None, account.account_id):
            raise CommandError(
                f"the store ({store_location(config)}) is already initialised for account"
                f" {account.account_id};"
                f" it was not changed (asked for {account_id})"
            )
        ring, ring_how = ensure_key_ring_in(store, now, adopt=config.token_keys_path)
        ca_key, ca_cert, ca_how = ensure_pair_in(
            store,
            (NODE_CA_KEY, NODE_CA_CERT),
            lambda: create_ca(now),
            now,
            adopt=(config.ca_key_path, config.ca_cert_path),
        )
        _, _, identity_how = ensure_pair_in(
            store,
            (IDENTITY_KEY, IDENTITY_CERT),
            lambda: create_identity_key(now, REGION),
            now,
            adopt=(config.identity_key_path, config.identity_cert_path),
        )
    finally:
        store.close()
    issued = _ensure_node_api_certificate(config, names, now, (ca_key, ca_cert))
    server_names = server_certificate_names(
        _read(config.node_api_cert_path, "the node API certificate")
    )
    if not issued:
        _check_node_api_names(config, node_api_names, server_names)
        if load_certificate(
            _read(config.node_api_cert_path, "the node API certificate")
        ).issuer != (load_certificate(ca_cert).subject):
            raise CommandError(
                f"the node API certificate {config.node_api_cert_path} was not issued by the"
                " node CA in the database, so agents would refuse it; remove it and"
                f" {config.node_api_key_path.name}, then run init again"
            )
    made = {
        "created": "made now",
        "existing": "shared, made by an earlier init",
        "adopted": f"taken from {config.state_dir}",
    }
    credentials = config.root_credentials_path
    if bootstrap.root_key is not None:
        _write_private(credentials, _credentials_text(bootstrap, profile))
        print(
            f"Initialised RoleCall in the store ({store_location(config)}, schema version"
            f" {version})."
        )
        key_id = bootstrap.root_key.access_key_id
        root = f"{key_id}, in {credentials} (profile {profile})"
    else:
        print(
            f"RoleCall is already initialised in the store ({store_location(config)}, schema"
            f" version {version}); this host shares it."
        )
        root = "in the root-credentials file of the host whose init made the account"
    print(f"  account     {account.account_id} ({account.name})")
    print(f"  root key    {root}")
    print(f"  token key   {ring.active_id}, in the database ({made[ring_how]})")
    print(f"  node CA     in the database ({made[ca_how]})")
    what = "issued now from the shared node CA" if issued else "issued before"
    print(f"  node API    this host's certificate for {', '.join(server_names)}, {what},")
    print(f"              in {config.node_api_cert_path}")
    print(f"  identity    in the database ({made[identity_how]})")
    print("Start the controller (on each host):")
    print(f"  rolecall-controller --state-dir {config.state_dir} serve")
    print("Enroll each hypervisor for the node API (on any controller host):")
    print(f"  rolecall-controller --state-dir {config.state_dir} enroll-node NAME --out DIR")
    return 0


def _rotate_shared(config: ControllerConfig, *, revoke: bool) -> int:
    store = _open_store(config)
    try:
        now = datetime.now(UTC)
        ring = revoke_key_ring_in(store, now) if revoke else rotate_key_ring_in(store, now)
    finally:
        store.close()
    if revoke:
        print(f"Session tokens are now sealed with key {ring.active_id}; every other key is gone.")
        print(
            "Every running controller refuses the tokens sealed before as soon as the database"
            " tells it (at once), within a minute at most."
        )
        print(
            "Instance credentials are among them: restart the agents (systemctl restart"
            " rolecall-agent) so that guests get new ones at once."
        )
        return 0
    print(f"Session tokens are now sealed with key {ring.active_id}.")
    for key in ring.keys:
        if key.key_id != ring.active_id and key.retire_after is not None:
            print(f"  key {key.key_id} still verifies until {format_time(key.retire_after)}")
    print(
        "Every running controller picks the new key up as soon as the database tells it (at"
        " once), within a minute at most; each verifies it from the start."
    )
    return 0


def _since(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 time with its offset, such as 2024-05-01T12:00:00Z (got {text!r})"
        )
    return format_time(moment)


def _instance_id(text: str) -> str:
    if not INSTANCE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"must be an instance id such as i-0123456789abcdef0 (got {text!r})"
        )
    return text


#: Records read from the database at a time.
_AUDIT_PAGE = 1000


def audit_records(config: ControllerConfig, since: str | None, instance_id: str | None) -> int:
    """Print the audit records, oldest first, one JSON object per line (as the file holds
    them), from the database's audit_log table (PostgreSQL) or the audit log file (SQLite)."""
    if _shared(config):
        store = _open_store(config)
        try:
            after = 0
            while True:
                with store.transaction() as tx:
                    page = tx.list_audit_records(since, instance_id, after, _AUDIT_PAGE)
                for _, text in page:
                    print(text)
                if len(page) < _AUDIT_PAGE:
                    return 0
                after = page[-1][0]
        finally:
            store.close()
    path = config.audit_log_path
    try:
        stream = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return 0  # nothing was issued yet
    except OSError as error:
        raise CommandError(f"cannot read the audit log {path}: {error.strerror}") from None
    with stream:
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash: not a record
            if not isinstance(record, dict):
                continue
            if since is not None and str(record.get("time", "")) < since:
                continue
            if instance_id is not None and record.get("instance_id") != instance_id:
                continue
            print(line.rstrip("\n"))
    return 0


def migrate_store(config: ControllerConfig, dsn: str) -> int:
    """Copy the state directory's SQLite store into PostgreSQL and verify both sides."""
    from controller.store.migrate import copy_to_postgresql
    from controller.store.postgresql import check_dsn, describe_dsn

    problem = check_dsn(dsn)
    if problem is not None:
        raise CommandError(f"--to: {problem}")
    _check_initialised(replace(config, store_backend="sqlite"))
    report = copy_to_postgresql(config.database_path, dsn)
    where = describe_dsn(dsn)
    rows = [("table", "rows (SQLite)", "rows (PostgreSQL)", "copied", "sha256 (SQLite)", "")]
    for source, target in zip(report.source, report.target, strict=True):
        same = source == target
        rows.append(
            (
                source.table,
                str(source.rows),
                str(target.rows),
                str(report.copied[source.table]),
                source.checksum[:16],
                "ok" if same else f"DIFFERS (PostgreSQL {target.checksum[:16]})",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    copied = sum(report.copied.values())
    if not report.verified:
        raise CommandError(
            f"the copy in {where} does not match the SQLite store {config.database_path} (see"
            " the tables marked DIFFERS): do not switch to it"
        )
    if copied:
        print(f"Copied {copied} rows into {where}; every table's count and checksum match.")
    else:
        print(f"Nothing new to copy: {where} holds every row already; counts and checksums match.")
    print(f"The SQLite store {config.database_path} was not changed.")
    _migrate_shared_files(config, dsn)
    print("To switch, set in the controller's configuration, then restart it:")
    print('  [store]\n  backend = "postgresql"')
    print(f'  dsn = "{_dsn_without_password(dsn)}"')
    return 0


def _migrate_shared_files(config: ControllerConfig, dsn: str) -> None:
    """What the state directory holds as files and PostgreSQL keeps in the database for every
    controller (controller.shared): the token key ring, the node CA, the instance identity key
    and certificate, and the audit log's records. Each is taken only while the database has
    none, so running the command again changes nothing."""
    from controller.shared import adopt_files
    from controller.store.postgresql import PostgreSQLStore

    store = PostgreSQLStore(dsn, pool_size=1)
    try:
        for line in adopt_files(store, config, datetime.now(UTC)):
            print(line)
    finally:
        store.close()


def _dsn_without_password(dsn: str) -> str:
    from controller.store.postgresql import redact

    return redact(dsn, dsn)


def serve(config: ControllerConfig) -> int:
    from twisted.internet import reactor

    from common.listening import ListeningService
    from common.logs import start_logging
    from common.notify import Notifier, ReadyGate, listening_status
    from common.runner import DaemonReactor, run_daemon
    from controller.compose import IControllerReactor, make_service

    check_state_directory(config.state_dir)
    from controller import awsmanaged
    from controller.config import load_aws_managed_policies

    # Read once, before serving: a bad directory stops the start (ConfigError), never a
    # request; a policy whose file is gone at the next start allows nothing where attached.
    awsmanaged.catalog = load_aws_managed_policies(config)
    if config.store_dsn is not None:
        from twisted.internet.interfaces import IReactorFromThreads

        from controller.driverlog import DriverLogHandler, route_driver_logs

        # psycopg_pool logs from its own threads: each line is written on the reactor's.
        threads = cast(IReactorFromThreads, reactor)
        route_driver_logs(DriverLogHandler([config.store_dsn], deliver=threads.callFromThread))
    store = _open_store(config)
    start_logging()
    # The global reactor's static type names only the interfaces every reactor has; the
    # controller's are among those it provides.
    service = make_service(config, cast(IControllerReactor, reactor), store)
    # systemd (Type=notify) hears READY=1 once all three listen, STOPPING=1 on shutdown.
    notifier = Notifier.from_environment(os.environ)
    labels = {"api": "API", "node-api": "node API", "metrics": "metrics"}
    listeners = {name: cast(ListeningService, service.getServiceNamed(name)) for name in labels}

    def status() -> str:
        return listening_status(
            (label, listeners[name].address()) for name, label in labels.items()
        )

    ready = ReadyGate(notifier, labels, status)
    code = run_daemon(cast(DaemonReactor, reactor), service, notifier, ready, listeners)
    store.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
