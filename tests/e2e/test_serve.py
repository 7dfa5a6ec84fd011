"""``rolecall-controller serve`` as a process: graceful stop; a clear error if it cannot listen."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, start_controller, stop_controller


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_sigterm_and_sigint(tmp_path: Path, signal_number: int) -> None:
    controller = start_controller(tmp_path / "state")
    try:
        controller.process.send_signal(signal_number)
        code = controller.process.wait(timeout=15)
    finally:
        stop_controller(controller)
    assert code == 0
    assert "Traceback" not in "".join(controller.output)


def test_serve_on_a_busy_port_exits_non_zero_naming_the_port(tmp_path: Path) -> None:
    controller = start_controller(tmp_path / "state")
    stop_controller(controller)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [BIN / "rolecall-controller", "--state-dir", tmp_path / "state", "serve",
             "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
