"""Fixtures for the tests that boot a real QEMU guest (root only): the guest image (Debian's
kernel and busybox, fetched and built once, cached), and whether this machine can run QEMU at all.

Skipped, each saying why, only where the machine cannot: not root (no taps), no /dev/net/tun, or a
QEMU whose TCG cannot start (no executable memory for its translator). A missing QEMU is a
failure: ``make install`` installs it. A guest that fails to boot is a failure too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import steer
from demo import vmguest
from demo.guest import namespaces
from demo.vmimage import GuestImage, GuestImageError, guest_image
from tests.netns import harness
from tests.vm import network

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="VM tests need root (tap devices, bridges): run make test as root, as CI does"
    )
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def qemu() -> None:
    """Skips the test where this machine cannot run a QEMU guest at all (see the module)."""
    try:
        problem = vmguest.qemu_problem()
    except vmguest.VmError as error:
        pytest.fail(str(error))
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def image(qemu: None) -> GuestImage:
    """The guest's kernel and initramfs (built on the first run, then taken from the cache)."""
    try:
        return guest_image()
    except GuestImageError as error:
        pytest.fail(f"could not make the guest: {error}")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """At the end of the session: no bridge, tap, veth or namespace these tests made, no
    steering table, and no QEMU or daemon they started, is left."""
    if os.geteuid() != 0:
        yield
        return
    yield
    left = {
        "links": sorted(name for name in network.MADE.links if vmguest.link_exists(name)),
        "namespaces": sorted(network.MADE.namespaces & namespaces()),
        "QEMU processes": [vm.pid for vm in network.MADE.guests if vm.running],
        # The real controller and agent of test_real_vm.py (tests/netns/harness.py).
        "instance namespaces": sorted(harness.MADE.namespaces & namespaces()),
        "steering tables": sorted(harness.MADE.namespaces & set(steer.tables())),
        "daemons": [
            " ".join(map(str, process.args))
            for process in harness.MADE.processes
            if process.poll() is None
        ],
    }
    assert not any(left.values()), f"left behind: { {k: v for k, v in left.items() if v} }"
