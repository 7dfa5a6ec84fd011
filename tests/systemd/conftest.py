"""One container for the whole run (``make test-systemd``): a cached Debian 12 tree copied fresh,
booted with systemd 252 as PID 1, RoleCall installed in it as docs/operations.md says, the
controller and one node's agent enabled and started; and a PostgreSQL on the host whose socket
directory the container sees at /run/postgresql (tests/systemd/database.py). Each test gets it
with both units running and leaves it so: `restored` puts back what a test changed (agent.toml,
a stopped controller, its instances), whether the test passed or not.

The time each phase took is printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd import container as containers
from tests.systemd.database import INSIDE, HostDatabase, host_database
from tests.systemd.deployment import (
    AGENT,
    AGENT_TOML,
    CONTROLLER,
    Deployment,
    build_wheels,
    put_sources,
)

HERE = Path(__file__).resolve().parent
#: Seconds per phase, in order, for the summary at the end.
PHASES: dict[str, float] = {}


class Phase:
    """Times a `with` block as one phase of the run."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Phase:
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        PHASES[self.name] = time.monotonic() - self.started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if PHASES:
        terminalreporter.write_sep("-", "systemd test phases")
        for name, seconds in PHASES.items():
            terminalreporter.write_line(f"{name:<40} {seconds:6.1f} s")
        terminalreporter.write_line(f"{'total':<40} {sum(PHASES.values()):6.1f} s")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without root, these tests are skipped, each saying why (as the namespace tests are)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="the systemd tests boot a container: run make test-systemd as root, as CI does"
    )
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def database() -> Iterator[HostDatabase]:
    """A PostgreSQL on the host that the container reaches at /run/postgresql (tests/systemd/
    database.py): started before the container boots, which binds its socket directory."""
    with Phase("PostgreSQL on the host (initdb, start)"):
        context = host_database()
        database = context.__enter__()
    try:
        yield database
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, database: HostDatabase
) -> Iterator[Deployment]:
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing (make test-systemd installs it)"
    workdir = tmp_path_factory.mktemp("systemd")
    started = time.monotonic()
    with open(workdir / "debootstrap.log", "w", encoding="utf-8") as log:
        tree, built = containers.cached_tree(log=log)
    PHASES[f"root file system ({'debootstrap' if built else 'cache hit'})"] = (
        time.monotonic() - started
    )
    with Phase("wheels (pip wheel on the host)"):
        wheelhouse = workdir / "wheelhouse"
        build_wheels(wheelhouse)
    with Phase("copy of the root file system"):
        container = containers.Container(tree, workdir)
    container.read_only_binds.append((database.socket_dir, INSIDE))
    try:
        with Phase("boot (systemd-nspawn to 'running')"):
            put_sources(container, wheelhouse)
            state = container.boot()
        assert state == "running", (
            f"the container booted {state}: "
            + container.run(["systemctl", "--failed", "--no-legend"]).stdout
        )
        deployment = Deployment(container)
        with Phase("install (docs/operations.md) and start"):
            deployment.install()
            deployment.start_controller()
            deployment.start_agent()
            deployment.make_role()
        tests_started = time.monotonic()
        yield deployment
        PHASES["tests"] = time.monotonic() - tests_started
    finally:
        with Phase("stop the container and clean up"):
            container.close()
        left = container.leftovers()
        assert not left, f"left on the host: {left}"


@pytest.fixture
def restored(deployment: Deployment) -> Iterator[Deployment]:
    """The deployment with both units running; afterwards, whatever the test did: agent.toml as
    installed, the controller started, the test's instances terminated, both units running."""
    for unit in (CONTROLLER, AGENT):
        deployment.wait_active(unit, timeout=60)
    try:
        yield deployment
    finally:
        deployment.write_file("/etc/rolecall/agent.toml", AGENT_TOML, mode="0644")
        deployment.systemctl("start", CONTROLLER)
        deployment.wait_active(CONTROLLER, timeout=60)
        if deployment.unit(AGENT)["ActiveState"] == "failed":
            deployment.systemctl("reset-failed", AGENT)
            deployment.systemctl("start", AGENT)
        deployment.wait_active(AGENT, timeout=60)
        for instance_id in list(deployment.launched):
            deployment.terminate(instance_id)
