"""Fixtures for real-namespace tests (root only): a whole small cloud per test, and a check at
the end of the session that no namespace, veth link, process or thread made here is left."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import netns, steer
from tests.netns import harness

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without root, the namespace tests are skipped, each saying why (not failed on an assert)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="namespace tests need root (real network namespaces): run make test as root,"
        " as CI does"
    )
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    if os.geteuid() != 0:  # every test here is skipped
        yield
        return
    yield
    left = {
        "namespaces": sorted(harness.MADE.namespaces & harness.namespaces()),
        "veth links in the root namespace": harness.root_veths(),
        "processes": [
            " ".join(map(str, process.args))
            for process in harness.MADE.processes
            if process.poll() is None
        ],
        "child processes": harness.children(),
        "threads": [thread.name for thread in harness.MADE.threads if thread.is_alive()],
        "steering tables": sorted(harness.MADE.namespaces & set(steer.tables())),
    }
    assert not any(left.values()), f"left behind: { {k: v for k, v in left.items() if v} }"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[harness.Cloud]:
    """A controller, a node enrolled under a unique name and its ``rolecall-agent`` process;
    at teardown the agent and controller stop and every namespace of the test is removed."""
    with harness.cloud_in(tmp_path) as running:
        yield running


@pytest.fixture
def name() -> Iterator[str]:
    """A unique name in /run/netns; whatever the test put there (a namespace, a plain file, a
    symbolic link) is removed afterwards."""
    chosen = f"rct-{uuid.uuid4().hex[:10]}"
    try:
        yield chosen
    finally:
        path = netns.NETNS_DIR / chosen
        if path.is_symlink() or (path.exists() and not os.path.ismount(path)):
            path.unlink()
        elif path.exists():  # a bind mount: unnamed as `ip netns delete` does
            subprocess.run(["ip", "netns", "delete", chosen], capture_output=True, check=False)
