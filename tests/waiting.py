"""Waiting for something the tests cannot be told about (a process's line, a namespace gone)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.1,
) -> T:
    """Poll `condition` until it returns something true, at most `timeout` seconds. `what`
    names what is awaited; a function for it is called on failure (to say what was seen last)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            described = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout} s waiting for {described}")
        time.sleep(interval)
