"""Fixtures for the high-availability tests: several controllers on one store, real agents in
real namespaces (root only), and a check at the end that nothing made here is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The namespace tests' end-of-session check: no namespace, veth, process or thread of
# tests.netns.harness's (which these tests use) may outlive the session.
from tests.netns.conftest import nothing_left_behind

__all__ = ["nothing_left_behind"]

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without root, these tests are skipped, saying why (real namespaces, the agent's port 80)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(
        reason="the high-availability tests need root (real namespaces, PostgreSQL run as"
        " postgres): run make test as root, as CI does"
    )
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)
