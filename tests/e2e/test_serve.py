"""``rolecall-controller serve`` as a process: graceful stop; a clear error if it cannot listen or
cannot use its instance identity key, one warning if it has none."""

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


def serve_until_listening(state_dir: Path) -> tuple[int | None, list[str]]:
    """Run ``serve`` on free ports until its public API listens, or it exits; stop it with
    SIGTERM. Its exit status if it exited by itself, and its output."""
    process = subprocess.Popen(
        [BIN / "rolecall-controller", "--state-dir", state_dir, "serve",
         "--port", "0", "--node-api-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    output: list[str] = []
    try:
        for line in process.stdout:
            output.append(line)
            if "public API listening on" in line:
                process.send_signal(signal.SIGTERM)
                output.extend(process.stdout)
                assert process.wait(timeout=15) == 0
                return None, output
        return process.wait(timeout=15), output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_without_an_instance_identity_key_starts_and_warns_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stop_controller(start_controller(state))
    (state / "instance-identity.key").unlink()
    (state / "instance-identity.pem").unlink()
    exited, output = serve_until_listening(state)
    assert exited is None, "".join(output)
    warnings = [line for line in output if "no instance identity key" in line]
    assert len(warnings) == 1, "".join(output)
    assert warnings[0].startswith("WARN rolecall.controller: ")
    assert str(state / "instance-identity.key") in warnings[0]


def test_serve_with_a_broken_instance_identity_key_exits_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stop_controller(start_controller(state))
    (state / "instance-identity.key").write_text("not a key\n")
    exited, output = serve_until_listening(state)
    assert exited == 1, "".join(output)
    text = "".join(output)
    assert "not an unencrypted PEM private key" in text
    assert str(state / "instance-identity.key") in text
    assert "Traceback" not in text
