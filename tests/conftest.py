"""The default run (``make test``, bare ``pytest``) leaves tests/systemd out: those tests boot a
container with systemd as PID 1 and have their own target, ``make test-systemd``. Naming the
directory (``pytest tests/systemd``) runs them.

A suite started in the background by a shell without job control (``sh -c 'make test &'``)
inherits SIGINT ignored, and so would every daemon it starts: Twisted then leaves SIGINT ignored,
and the tests that stop a daemon or the demo with SIGINT would wait for nothing. The session
puts the default back first."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SYSTEMD_TESTS = Path(__file__).parent / "systemd"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path != SYSTEMD_TESTS:
        return None
    invoked = config.invocation_params.dir
    named = (Path(invoked, argument.split("::")[0]).resolve() for argument in config.args)
    if any(path == SYSTEMD_TESTS or SYSTEMD_TESTS in path.parents for path in named):
        return None
    return True
