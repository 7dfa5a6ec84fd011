"""What the benchmarks share: the servers they start, stop, watch and read logs of."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.privileged import serving_python_environment


class BenchError(Exception):
    """The run cannot give a valid figure; the message says why."""


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in a session of its own, and anything left in its group."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def started(command: list[str], log: Path, core: str | None = None) -> Iterator[Any]:
    """Run ``command`` (pinned to ``core``) in its own session, output to ``log``; stop it (and
    its group) on the way out, however the block ends."""
    if core is not None:
        command = ["taskset", "-c", core, *command]  # taskset execs: the pid is the server's
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment["PYTHONUNBUFFERED"] = "1"
    # The agent's serving process runs as nobody, who may not reach a Python under /root.
    environment.update(serving_python_environment())
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        terminate(process)


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants alive now (the agent is two processes: the privileged one,
    which the benchmark starts, and the serving process it starts)."""
    found = [pid]
    for each in found:
        for task in Path(f"/proc/{each}/task").glob("*/children"):
            try:
                found.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its descendants, all their threads (Linux
    /proc; a descendant's time counts while it is alive)."""
    total = 0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
