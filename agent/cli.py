"""``rolecall-agent``: the node agent daemon; ``rolecall-agent plug|unplug|hook``: what the
hypervisor runs to wire a VM's tap to its instance's metadata service (`agent.plug`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from subprocess import SubprocessError
from typing import Any

from agent.checks import check_configuration, check_files
from agent.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_PLUG_SOCKET,
    AgentConfig,
    ConfigError,
    load_agent_config,
)

DEFAULT_OWNERSHIP = Path("/run/rolecall-agent/namespaces.json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolecall-agent",
        description="RoleCall node agent: instance metadata and role credentials for the"
        " instances placed on this node.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML configuration (default {DEFAULT_CONFIG_PATH} if it exists)",
    )
    parser.add_argument(
        "--controller-url",
        action="append",
        metavar="URL",
        help="node API URL (repeat for failover)",
    )
    parser.add_argument("--certificate", type=Path, help="this node's certificate (PEM)")
    parser.add_argument("--key", type=Path, help="this node's private key (PEM)")
    parser.add_argument("--ca-certificate", type=Path, help="the controller's node CA (PEM)")
    parser.add_argument("--metrics-host", help="metrics and health address (default 127.0.0.1)")
    parser.add_argument(
        "--metrics-port", type=int, help="metrics and health port (default 9774; 0: any)"
    )
    parser.add_argument(
        "--imds-port", type=int, help="metadata port inside namespaces (default 80)"
    )
    parser.add_argument(
        "--user",
        help="the unprivileged user that serves guests and talks to the controller"
        " (default rolecall-agent)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration, the node's files and the serving user, then exit"
        " (0: the agent would start)",
    )
    parser.add_argument(
        "--ownership-file",
        type=Path,
        default=DEFAULT_OWNERSHIP,
        help=f"where the agent records the namespaces it made (default {DEFAULT_OWNERSHIP})",
    )
    return parser


#: The commands the hypervisor runs (the daemon is ``rolecall-agent`` with flags only).
HYPERVISOR_COMMANDS = ("plug", "unplug", "hook")


def _hypervisor_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolecall-agent",
        description="Tell the running agent which tap is a VM's (docs/operations.md, 'Wiring a"
        " VM to its metadata service'). Run as root.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help=f"the agent's TOML configuration, for [hypervisor] plug_socket (default"
        f" {DEFAULT_CONFIG_PATH} if it exists)",
    )
    common.add_argument(
        "--socket", type=Path, help=f"the agent's plug socket (default {DEFAULT_PLUG_SOCKET})"
    )
    plug = commands.add_parser(
        "plug", parents=[common], help="steer the instance's metadata service to the VM's tap"
    )
    plug.add_argument("instance", metavar="INSTANCE", help="the instance id (i-...)")
    plug.add_argument("tap", metavar="TAP", help="the VM's tap device in the host namespace")
    unplug = commands.add_parser(
        "unplug", parents=[common], help="stop steering the instance's metadata service"
    )
    unplug.add_argument("instance", metavar="INSTANCE", help="the instance id (i-...)")
    unplug.add_argument(
        "tap", metavar="TAP", nargs="?", default="", help="only if this tap is the one plugged"
    )
    hook = commands.add_parser(
        "hook",
        parents=[common],
        help="the libvirt qemu hook (domain XML on standard input)",
    )
    hook.add_argument("guest", metavar="GUEST", help="the domain's name")
    hook.add_argument("operation", metavar="OP", help="started, stopped, release, ...")
    hook.add_argument("suboperation", metavar="SUBOP", help="begin or end")
    hook.add_argument("extra", metavar="EXTRA", nargs="*", help="libvirt's extra arguments")
    return parser


def _plug_socket(config: Path | None, given: Path | None) -> Path:
    """The plug socket: --socket, else the configuration's, else the default."""
    if given is not None:
        return given
    if config is None and not DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_PLUG_SOCKET
    return load_agent_config(config).plug_socket


def hypervisor_main(argv: list[str]) -> int:
    """``rolecall-agent plug|unplug|hook ...``: 0 when the agent took it (a hook: always)."""
    from agent import hook, plug

    parser = _hypervisor_parser()
    args = parser.parse_args(argv)
    if args.command == "hook" and args.operation not in hook.ACTIONS:
        return 0  # at once: nothing read, nothing said
    if args.command != "hook":
        from agent.names import InvalidName, InvalidTap, check_instance_id, check_tap

        try:
            check_instance_id(args.instance)
        except InvalidName as error:
            parser.error(f"argument INSTANCE: {error}")
        if args.tap or args.command == "plug":
            try:
                check_tap(args.tap)
            except InvalidTap as error:
                parser.error(f"argument TAP: {error}")
    try:
        path = _plug_socket(args.config, args.socket)
    except (ConfigError, OSError) as error:
        print(f"rolecall-agent {args.command}: {error}", file=sys.stderr)
        return 0 if args.command == "hook" else 1
    if args.command == "hook":
        return hook.main_hook(
            args.guest,
            args.operation,
            lambda op, instance, tap, timeout: plug.ask_or_spool(path, op, instance, tap, timeout),
        )
    try:
        answer = plug.ask_or_spool(
            path, args.command, args.instance, args.tap, plug.CLIENT_TIMEOUT_SECONDS
        )
    except plug.PlugSocketError as error:
        print(f"rolecall-agent {args.command}: {error}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"rolecall-agent {args.command}: {answer.get('error', 'refused')}", file=sys.stderr)
        return 1
    tap = args.tap or "-"
    if answer.get("state") == "spooled":
        print(
            f"{args.command} {args.instance} {tap}: spooled ({answer.get('why')}): done when the"
            " agent starts"
        )
        return 0
    print(
        f"{args.command} {args.instance} {tap}: {answer.get('state', '')}"
        f" (namespace {answer.get('namespace', '?')})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in HYPERVISOR_COMMANDS:
        return hypervisor_main(arguments)
    parser = _parser()
    args = parser.parse_args(argv)
    for flag, port in (("--metrics-port", args.metrics_port), ("--imds-port", args.imds_port)):
        if port is not None and not 0 <= port <= 65535:
            parser.error(f"argument {flag}: must be from 0 to 65535 (got {port})")
    try:
        if args.config is None and not DEFAULT_CONFIG_PATH.exists():
            if not args.controller_url:
                raise ConfigError(
                    f"no configuration ({DEFAULT_CONFIG_PATH} does not exist) and no"
                    " --controller-url: the agent needs a node API URL"
                )
            config = AgentConfig(controller_urls=tuple(args.controller_url))
        else:
            config = load_agent_config(args.config)
        config = _override(
            config,
            controller_urls=tuple(args.controller_url) if args.controller_url else None,
            certificate=args.certificate,
            key=args.key,
            ca_certificate=args.ca_certificate,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
            imds_port=args.imds_port,
            user=args.user,
        )
        config_file = _config_file(args.config)
        if args.check_config:
            print(f"rolecall-agent: {check_configuration(config, config_file)}")
            return 0
        check_files(config, config_file)
        return run(config, args.ownership_file)
    except (ConfigError, OSError, SubprocessError) as error:
        print(f"rolecall-agent: {error}", file=sys.stderr)
        return 1


def _config_file(given: Path | None) -> Path | None:
    """The configuration file in use, if any."""
    if given is not None:
        return given
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def _override(config: AgentConfig, **flags: Any) -> AgentConfig:
    """Flags given on the command line win over the file (argparse's values, as it types them:
    `dataclasses.replace` checks the names, the configuration's checks the values)."""
    return replace(config, **{name: value for name, value in flags.items() if value is not None})


def run(config: AgentConfig, ownership_file: Path) -> int:
    """The privileged process, which starts the unprivileged serving process (see
    `agent.privileged` and `agent.serving`)."""
    from agent.privileged import run as run_privileged

    if not config.controller_urls:
        raise ConfigError("controller.urls: at least one node API URL is needed (--controller-url)")
    return run_privileged(config, ownership_file)


if __name__ == "__main__":
    sys.exit(main())
