"""``rolecall-controller``: initialise a state directory, then serve the API."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from controller.accounts import (
    ACCOUNT_ID,
    Bootstrap,
    create_account,
    ensure_first_account,
    new_account_id,
)
from controller.config import ConfigError, ControllerConfig, load_config
from controller.keyring import KeyRingError, ensure_key_ring, rotate_key_ring
from controller.store.base import Conflict, StoreError
from controller.store.sqlite import SQLiteStore
from controller.xmlout import format_time

DEFAULT_PROFILE = "rolecall"


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

    commands.add_parser(
        "rotate-token-key",
        help="seal new session tokens with a new key; old keys verify until their tokens expire",
    )

    serve = commands.add_parser("serve", help="run the controller until SIGTERM or SIGINT")
    serve.add_argument("--host", help="address of the public API (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="port of the public API (default 8773; 0 picks a free one)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config).with_overrides(state_dir=args.state_dir)
        if args.command == "init":
            return init(config, args.account_id, args.account_name, args.profile)
        if args.command == "account" and args.account_command == "create":
            return account_create(config, args.name, args.account_id, args.profile)
        if args.command == "account":
            return account_list(config)
        if args.command == "rotate-token-key":
            return rotate_token_key(config)
        config = config.with_overrides(api_host=args.host, api_port=args.port)
        if config.api_port is not None and not 0 <= config.api_port <= 65535:
            parser.error(f"argument --port: must be from 0 to 65535 (got {config.api_port})")
        return serve(config)
    except (ConfigError, CommandError, StoreError, KeyRingError) as error:
        print(f"rolecall-controller: {error}", file=sys.stderr)
        return 1


def init(config: ControllerConfig, account_id: str | None, account_name: str, profile: str) -> int:
    if account_id is not None and not ACCOUNT_ID.fullmatch(account_id):
        raise CommandError(f"--account-id must be 12 digits (got {account_id!r})")
    state_dir = config.state_dir
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(
            f"cannot create the state directory {state_dir}: {error.strerror}"
        ) from error
    store = SQLiteStore(config.database_path)
    try:
        with store.transaction() as tx:
            bootstrap = ensure_first_account(
                tx, account_id, account_name, format_time(datetime.now(UTC))
            )
        version = store.schema_version()
    finally:
        store.close()
    ring = ensure_key_ring(config.token_keys_path, datetime.now(UTC))
    account = bootstrap.account
    credentials = config.root_credentials_path
    if bootstrap.root_key is not None:
        _write_private(credentials, _credentials_text(bootstrap, profile))
        print(f"Initialised RoleCall in {state_dir} (store schema version {version}).")
        print(f"  account     {account.account_id} ({account.name})")
        key_id = bootstrap.root_key.access_key_id
        print(f"  root key    {key_id}, in {credentials} (profile {profile})")
        print(f"  token key   {ring.active_id}, in {config.token_keys_path}")
    else:
        if account_id is not None and account_id != account.account_id:
            raise CommandError(
                f"{state_dir} is already initialised for account {account.account_id};"
                f" it was not changed (asked for {account_id})"
            )
        print(f"RoleCall is already initialised in {state_dir}; nothing was changed.")
        print(f"  account     {account.account_id} ({account.name})")
        print(f"  root key    in {credentials}")
    print("Start the controller:")
    print(f"  rolecall-controller --state-dir {state_dir} serve")
    print("Then use it with the AWS CLI:")
    print(
        f"  AWS_SHARED_CREDENTIALS_FILE={credentials} aws --profile {profile} --region us-east-1"
        f" --endpoint-url http://{config.api_host}:{config.api_port} iam list-roles"
    )
    return 0


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


def _open_store(config: ControllerConfig) -> SQLiteStore:
    if not config.database_path.exists():
        raise CommandError(
            f"{config.state_dir} is not initialised (no {config.database_path.name});"
            f" run: rolecall-controller --state-dir {config.state_dir} init"
        )
    return SQLiteStore(config.database_path)


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


def rotate_token_key(config: ControllerConfig) -> int:
    """New session tokens are sealed with a new key; old keys keep verifying what they sealed."""
    ring = rotate_key_ring(config.token_keys_path, datetime.now(UTC))
    print(f"Session tokens are now sealed with key {ring.active_id}.")
    for key in ring.keys:
        if key.key_id != ring.active_id and key.retire_after is not None:
            print(f"  key {key.key_id} still verifies until {format_time(key.retire_after)}")
    print("Running controllers pick the new key up within a minute.")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only, replacing any older one atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def serve(config: ControllerConfig) -> int:
    from twisted.internet import reactor

    from controller.logs import start_logging
    from controller.service import make_service

    store = _open_store(config)
    start_logging()
    service = make_service(config, reactor, store)
    status = {"code": 0}

    def failed_to_listen(failure: object) -> None:
        status["code"] = 1
        reactor.stop()  # type: ignore[attr-defined]

    service.getServiceNamed("api").listening.addErrback(failed_to_listen)  # type: ignore[attr-defined]
    reactor.callWhenRunning(service.startService)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    store.close()
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
