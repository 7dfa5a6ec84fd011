"""What every tool shares: the connection flags, and one way to fail.

A tool is a :class:`Tool`: its flags and a ``run`` that makes calls through a :class:`Client` and
prints to stdout. :func:`main` parses, resolves settings and runs it; whatever goes wrong is one
line on stderr, ``TOOL: CODE: message`` for a service error, with exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import NoReturn, TextIO

import requests

from controller.tools.client import Client, ReadText, read_text, resolve_settings, utc_now
from controller.tools.errors import ToolError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


@dataclass(frozen=True)
class Tool:
    """One command-line tool."""

    name: str
    #: "iam" or "ec2": the service it calls, which names its endpoint variable.
    service: str
    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Client, TextIO], None]
    #: A command line and what it prints, for --help.
    example: str = ""


class UsageError(Exception):
    """The command line is wrong; the message says how."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage first; one line that points at --help is clearer.
        raise UsageError(message)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        words = list(sys.argv[1:] if args is None else args)
        try:
            return super().parse_args(words, namespace)
        except UsageError:
            # argparse names a missing required flag before an unknown one, but a mistyped
            # flag is usually why the required one is "missing": name the unknown flag first.
            unknown = self.unknown_flags(words)
            if unknown:
                raise UsageError(f"unrecognized arguments: {' '.join(unknown)}") from None
            raise

    def unknown_flags(self, words: Sequence[str]) -> list[str]:
        """The words that look like flags this parser does not have."""
        unknown = []
        for word in words:
            if word == "--":
                break
            if not word.startswith("-") or word == "-" or word[1:2].isdigit():
                continue
            name = word.partition("=")[0] if word.startswith("--") else word[:2]
            if name not in self._option_string_actions:
                unknown.append(word)
        return unknown


def build_parser(tool: Tool) -> argparse.ArgumentParser:
    """The tool's flags, then the connection flags every tool has."""
    epilog = f"example:\n{tool.example}" if tool.example else None
    parser = _Parser(
        prog=tool.name,
        description=tool.summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    tool.add_arguments(parser)
    variable = f"AWS_ENDPOINT_URL_{tool.service.upper()}"
    connection = parser.add_argument_group("connection")
    connection.add_argument(
        "-U",
        "--url",
        metavar="URL",
        help=f"endpoint URL (default: ${variable}, $AWS_ENDPOINT_URL, the profile's endpoint_url)",
    )
    connection.add_argument(
        "--region",
        help="region to sign for (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's "
        "region, us-east-1)",
    )
    connection.add_argument(
        "--profile",
        help="profile of the shared credentials file, instead of AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (default: $AWS_PROFILE, else default)",
    )
    connection.add_argument(
        "--debug",
        action="store_true",
        help="show each HTTP request and response on stderr, signature and secrets masked",
    )
    return parser


def main(
    tool: Tool,
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    session: requests.Session | None = None,
    clock: Callable[[], datetime] = utc_now,
    read: ReadText = read_text,
) -> int:
    """Run ``tool`` with ``argv``; the exit status. Everything from outside can be injected."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser(tool)
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        _fail(err, tool.name, f"{error} (see {tool.name} --help)")
        return EXIT_USAGE
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_OK
    owned = session is None
    http = session or requests.Session()
    try:
        settings = resolve_settings(
            tool.service,
            env=os.environ if env is None else env,
            url=args.url,
            profile=args.profile,
            region=args.region,
            read=read,
        )
        client = Client(
            settings,
            session=http,
            clock=clock,
            debug=err if args.debug else None,
            user_agent=f"rolecall-tools/{_version()} {tool.name}",
        )
        tool.run(args, client, out)
        out.flush()
    except ToolError as error:  # a ServiceError reads "CODE: message"
        _fail(err, tool.name, str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other Unix tools do, and keep
        # Python from complaining when it flushes stdout at exit.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        if owned:
            http.close()
    return EXIT_OK


def entry_point(tool: Tool) -> Callable[[], int]:
    """The function a console script calls: ``main`` with the process's arguments."""

    def run() -> int:
        return main(tool)

    run.__name__ = tool.name.replace("-", "_")
    run.__doc__ = tool.summary
    return run


def read_document(path: str, flag: str = "") -> str:
    """A policy document from a file named on the command line (by ``flag``, which the error
    names if given)."""
    where = f"{flag}: " if flag else ""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except OSError as error:
        raise ToolError(f"{where}cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ToolError(f"{where}cannot read {path}: it is not UTF-8 text") from None


def _fail(stream: TextIO, name: str, message: str) -> None:
    # One line whatever the service said: collapse any newlines in its message.
    print(f"{name}: {' '.join(message.split())}", file=stream)
    stream.flush()


def _version() -> str:
    try:
        return metadata.version("rolecall")
    except metadata.PackageNotFoundError:
        return "0"
