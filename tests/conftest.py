"""The default run (``make test``, bare ``pytest``) leaves tests/systemd out: those tests boot a
container with systemd as PID 1 and have their own target, ``make test-systemd``. Naming the
directory (``pytest tests/systemd``) runs them.

A suite started in the background by a shell without job control (``sh -c 'make test &'``)
inherits SIGINT ignored, and so would every daemon it starts: Twisted then leaves SIGINT ignored,
and the tests that stop a daemon or the demo with SIGINT would wait for nothing. The session
puts the default back first.

`pg_cluster` (one real PostgreSQL per session, started on first use) and `pg_dsn` (a fresh empty
database per test) come from tests/pg.py. Without PostgreSQL's server binaries they fail, saying
to run ``make install``: they never skip.

``make test`` runs the tests in two worker processes (pytest-xdist, ``--dist loadgroup``): the
tests bound to this host's network state are one unit of work that one worker runs in order
(`pytest_xdist_make_scheduler` below); each worker has its own PostgreSQL."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import Cluster, PostgresMissing, running_cluster

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SYSTEMD_TESTS = Path(__file__).parent / "systemd"
TESTS = Path(__file__).parent
#: Tests that change this host's network state (namespaces, links, nf_tables, the agents that
#: sweep namespaces by their prefix) or boot VMs, as paths relative to the root: with ``-n``
#: they are one unit of work, run in one worker in order, as without it.
HOST_BOUND = ("tests/netns/", "tests/vm/", "tests/ha/", "tests/systemd/")
HOST_BOUND_FILES = frozenset(
    f"tests/unit/{name}"
    for name in ("test_plug.py", "test_privileged.py", "test_nftables.py", "test_steer.py")
)


def host_bound(nodeid: str) -> bool:
    path = nodeid.split("::", 1)[0]
    return path in HOST_BOUND_FILES or path.startswith(HOST_BOUND)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``--dist loadgroup``: every host-bound test in one unit of work; each other module
    a unit of its own (its module-scoped fixtures, such as a controller, start once). Not
    xdist's own loadgroup, which groups by ``xdist_group`` marks it reads from node ids that
    pytest 9.2 no longer lets it change."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class HostBoundTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "host-bound" if host_bound(nodeid) else super()._split_scope(nodeid)

    return HostBoundTogether(config, log)


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
