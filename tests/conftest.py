"""The default run (``make test``, bare ``pytest``) leaves tests/systemd out: those tests boot a
container with systemd as PID 1 and have their own target, ``make test-systemd``. Naming the
directory (``pytest tests/systemd``) runs them.

A suite started in the background by a shell without job control (``sh -c 'make test &'``)
inherits SIGINT ignored, and so would every daemon it starts: Twisted then leaves SIGINT ignored,
and the tests that stop a daemon or the demo with SIGINT would wait for nothing. The session
puts the default back first.

`pg_cluster` (one real PostgreSQL per session, started on first use) and `pg_dsn` (a fresh empty
database per test) come from tests/pg.py. Without PostgreSQL's server binaries they fail, saying
to run ``make install``: they never skip."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import Cluster, PostgresMissing, running_cluster

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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the session, stopped and removed at its end (also on a failure
    or Ctrl-C)."""
    try:
        context = running_cluster()
        cluster = context.__enter__()
    except PostgresMissing as missing:
        pytest.fail(str(missing), pytrace=False)
    try:
        yield cluster
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def pg_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """The DSN of a fresh empty database (owner: the unprivileged role `rolecall`); it goes with
    the cluster at the session's end."""
    with pg_cluster.database() as dsn:
        yield dsn
