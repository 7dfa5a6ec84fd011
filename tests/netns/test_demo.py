"""``make demo`` (``python -m demo``) as a user runs it: it works end to end, and it
leaves nothing behind, neither after a run nor when interrupted in the middle."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from demo.guest import namespaces, root_veths

REPOSITORY = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "demo"]
TIMEOUT = 120
# Everything the demo names: its temporary directory, the instance's and the guest's namespace.
WORKDIR = re.compile(r"RoleCall demo, in (\S+)")
NAMESPACE = re.compile(r"\b(rc-i-[0-9a-f]+|rcg-[0-9a-f]+)\b")


def _left_behind(output: str) -> dict[str, list[str]]:
    """What the run named and still exists: namespaces, veth links, its directory, processes."""
    named = set(NAMESPACE.findall(output))
    workdir = WORKDIR.search(output)
    assert workdir, output
    processes = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if workdir.group(1) in command:
            processes.append(command)
    found = {
        "namespaces": sorted(named & namespaces()),
        "veth links in the root namespace": root_veths(),
        "directory": [workdir.group(1)] if Path(workdir.group(1)).exists() else [],
        "processes": processes,
    }
    return {what: items for what, items in found.items() if items}


def test_the_demo_runs_the_original_lines_and_a_guest_gets_the_roles_credentials() -> None:
    started = time.monotonic()
    result = subprocess.run(DEMO, cwd=REPOSITORY, capture_output=True, text=True, timeout=TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert time.monotonic() - started < 60, "the demo should take well under a minute"
    assert re.search(r"^    arn:aws:iam::\d{12}:instance-profile/s3access$", output, re.M), output
    assert re.search(r"assumed-role/s3access/i-[0-9a-f]+", output), output
    assert re.search(r"create_role\(intruder\): AccessDenied - .*iam:CreateRole", output), output
    assert "get_role(s3access): arn:aws:iam::" in output
    # cloud-init's view: the user data given, the key pair made, an interface matched by MAC.
    assert "user data       '#cloud-config\\nhostname: demo-web\\n'" in output, output
    assert re.search(r"^    ssh key         ssh-ed25519 \S+ demo$", output, re.M), output
    assert re.search(r"IMDSv2 token: yes", output), output
    assert re.search(r"DHCP, matched by MAC ([0-9a-f]{2}:){5}[0-9a-f]{2}$", output, re.M), output
    # Secrets are shown as their first four characters only.
    assert re.search(r'"SecretAccessKey" : "[^"]{4}…"', output), output
    assert re.search(r'"Token" : "[^"]{4}…"', output), output
    assert set(NAMESPACE.findall(output)), "the demo named no namespace"
    assert not _left_behind(output)


@pytest.mark.parametrize(
    "heading",
    [
        "the original design's three lines",  # the controller and the agent run
        "inside the guest: curl",  # and the instance's namespace and the guest exist
    ],
)
def test_an_interrupted_demo_exits_130_and_leaves_nothing(heading: str) -> None:
    demo = subprocess.Popen(
        DEMO, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while not seen or not seen[-1].startswith(f"==> {heading}"):
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, f"the demo ended before {heading!r}:\n{''.join(seen)}"
            seen.append(line)
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=TIMEOUT)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    reader.join(timeout=10)
    while (line := lines.get(timeout=1)) is not None:
        seen.append(line)
    output = "".join(seen)
    assert code == 130, output
    assert re.search(r"^demo stopped after [\d.]+ s: interrupted \(SIGINT\)$", output, re.M), output
    assert not _left_behind(output)
