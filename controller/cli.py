"""``rolecall-controller``: initialise a state directory, then serve the API."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from controller.accounts import ACCOUNT_ID, ensure_first_account
from controller.config import ConfigError, ControllerConfig, load_config
from controller.store.base import StoreError
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
        config = config.with_overrides(api_host=args.host, api_port=args.port)
        if config.api_port is not None and not 0 <= config.api_port <= 65535:
            parser.error(f"argument --port: must be from 0 to 65535 (got {config.api_port})")
        return serve(config)
    except (ConfigError, CommandError, StoreError) as error:
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
    account = bootstrap.account
    credentials = config.root_credentials_path
    if bootstrap.root_key is not None:
        _write_private(
            credentials,
            f"# RoleCall root credentials of account {account.account_id} ({account.name}).\n"
            "# Keep this file secret: it can do everything in the account.\n"
            f"[{profile}]\n"
            f"aws_access_key_id = {bootstrap.root_key.access_key_id}\n"
            f"aws_secret_access_key = {bootstrap.root_key.secret_access_key}\n",
        )
        print(f"Initialised RoleCall in {state_dir} (store schema version {version}).")
        print(f"  account     {account.account_id} ({account.name})")
        key_id = bootstrap.root_key.access_key_id
        print(f"  root key    {key_id}, in {credentials} (profile {profile})")
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

    if not config.database_path.exists():
        raise CommandError(
            f"{config.state_dir} is not initialised (no {config.database_path.name});"
            f" run: rolecall-controller --state-dir {config.state_dir} init"
        )
    store = SQLiteStore(config.database_path)
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
