"""The documented admin commands, run as root by mistake, refuse in one line naming the user to
run them as and change nothing, and the running controller goes on serving and starts again
(issue 17, item 2)."""

from __future__ import annotations

import re

import pytest

from tests.systemd.deployment import CONTROLLER, ROLE, STATE_DIR, VENV_BIN, Deployment

COMMANDS = [
    ["rotate-token-key"],
    ["nodes"],
    ["enroll-node", "compute9", "--out", "/tmp/compute9"],
]


def state_files(deployment: Deployment) -> list[str]:
    """Owner, group and path of everything in the state directory (one line each)."""
    shown = deployment.container.run(["find", STATE_DIR, "-printf", r"%u:%g %p\n"]).stdout
    return sorted(shown.splitlines())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_an_admin_command_run_as_root_refuses_in_one_line_and_the_controller_keeps_serving(
    restored: Deployment, command: list[str]
) -> None:
    run = restored.container.run
    key_ring = run(["sha256sum", f"{STATE_DIR}/token-keys.json"]).stdout
    since = restored.now()

    result = run(
        [f"{VENV_BIN}/rolecall-controller", "--state-dir", STATE_DIR, *command], check=False
    )
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(r"(?<![\w-])rolecall(?![\w-])", lines[0]), f"names no user: {lines[0]}"
    assert run(["sha256sum", f"{STATE_DIR}/token-keys.json"]).stdout == key_ring
    assert [
        line for line in state_files(restored) if not line.startswith("rolecall:rolecall ")
    ] == []
    assert run(["test", "-e", "/tmp/compute9"], check=False).returncode != 0

    # The running controller serves as before and logged nothing about it.
    assert restored.unit(CONTROLLER).active
    assert ROLE in restored.tool(["iam-rolegetattributes", "-r", ROLE])
    logged = restored.messages(restored.journal(CONTROLLER, since))
    assert not [line for line in logged if "CRITICAL" in line or "Traceback" in line], logged
    # And its next start works.
    assert restored.systemctl("restart", CONTROLLER).returncode == 0
    restored.wait_active(CONTROLLER)
    assert ROLE in restored.tool(["iam-rolegetattributes", "-r", ROLE])


def test_the_documented_command_runs_as_written(restored: Deployment) -> None:
    """docs/operations.md and the refusal above say `runuser -u rolecall -- rolecall-controller
    ...`: after the documented install (which links the commands into /usr/local/bin) that is a
    command runuser finds, and it works."""
    result = restored.container.run(
        ["runuser", "-u", "rolecall", "--", "rolecall-controller", "--state-dir", STATE_DIR,
         "nodes"],
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "compute1" in result.stdout
