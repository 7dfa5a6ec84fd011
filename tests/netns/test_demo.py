"""``make demo`` (``python -m demo``) as a user runs it: it works end to end, a real VM wired by
the libvirt hook included (or skipped, saying why, where QEMU cannot run), and it leaves nothing
behind, neither after a run nor when interrupted in the middle."""

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

from agent import steer
from demo.guest import namespaces, root_veths
from demo.vmguest import link_exists, qemu_problem

REPOSITORY = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "demo"]
TIMEOUT = 120
# Everything the demo names: its temporary directory, the instance's and the guest's namespace.
WORKDIR = re.compile(r"RoleCall demo, in (\S+)")
NAMESPACE = re.compile(r"\b(rc-i-[0-9a-f]+|rcg-[0-9a-f]+)\b")
#: The real VM's bridge and tap, and the steering's veth (host end).
LINK = re.compile(r"\b(rcdb-[0-9a-f]{8}|rcdt-[0-9a-f]{8}|rcv[0-9a-f]{12})\b")
VM_TAP = re.compile(r"\b(rcdt-[0-9a-f]{8})\b")


def _left_behind(output: str) -> dict[str, list[str]]:
    """What the run named and still exists: namespaces, links, steering tables, its directory,
    processes (its daemons and QEMU)."""
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
        # QEMU's command line names its tap (ifname=…), not the demo's directory.
        elif any(f"ifname={tap}," in command for tap in VM_TAP.findall(output)):
            processes.append(command)
    links = set(LINK.findall(output))
    steered = {f"rc-{instance}" for instance in re.findall(r"\brc-(i-[0-9a-f]+)\b", output)}
    found = {
        "namespaces": sorted(named & namespaces()),
        "links": sorted(link for link in links if link_exists(link)),
        "steering tables": sorted(steered & set(steer.tables())),
        # Only the run's own: the steering's veth shares the prefix "rcv" with the guests', and
        # another test run beside this one has its own.
        "veth links in the root namespace": [
            line for line in root_veths() if any(name in line for name in named | links)
        ],
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
    _check_the_real_vm(output)
    assert not _left_behind(output)


def _check_the_real_vm(output: str) -> None:
    """The real VM's part: wired by the shipped hook, it reads the instance's credentials
    (masked) and they are the instance's session; or the demo says why it skipped it."""
    problem = qemu_problem()
    if problem is not None:
        assert f"==> a real VM: skipped, this machine cannot run one\n    {problem}" in output
        return
    vm = output[output.index("==> the stand-in guest goes") : output.index("==> cleaning up")]
    instance = re.search(r"euca-terminate-instances (i-[0-9a-f]+)", output)
    assert instance, output
    tap = VM_TAP.search(vm)
    assert tap, vm
    hook = f"$ libvirt/qemu.d/rolecall {instance.group(1)} "
    assert f"{hook}started begin - < " in vm, vm
    assert f"rolecall-agent hook: plug {instance.group(1)} {tap.group(1)}: steered" in vm, vm
    assert f'type filter hook ingress device "{tap.group(1)}" priority -500' in vm, vm
    # Inside the VM: the token (status, then masked), iam/info, the credentials (masked).
    assert re.search(r"^    \$ imds token 21600\n    200\n    \S{4}…$", vm, re.M), vm
    assert re.search(r"imds get /latest/meta-data/iam/info \$TOKEN\n    200\n    \{", vm), vm
    assert re.search(r'"InstanceProfileArn" : "arn:aws:iam::\d{12}:instance-profile/s3access"', vm)
    assert "$ imds get /latest/meta-data/iam/security-credentials/s3access $TOKEN\n    200" in vm
    assert re.search(r'"SecretAccessKey" : "[^"]{4}…"', vm), vm
    assert re.search(r'"Token" : "[^"]{4}…"', vm), vm
    assert re.search(r'"AccessKeyId" : "ASIA[A-Z0-9]{16}"', vm), vm
    # STS, asked with the VM's credentials alone: the instance's session.
    assert '"Arn": "arn:aws:sts::' in vm and f':assumed-role/s3access/{instance.group(1)}"' in vm
    for operation in ("stopped", "release"):
        assert f"{hook}{operation} end - < " in vm, vm
    assert (
        vm.count(f"rolecall-agent hook: unplug {instance.group(1)} {tap.group(1)}: unplugged") == 2
    )
    assert "a real VM (QEMU) on tap" in output, output


@pytest.mark.parametrize(
    "heading",
    [
        "the original design's three lines",  # the controller and the agent run
        "inside the guest: curl",  # and the instance's namespace and the guest exist
        "the VM boots",  # and the bridge, the tap and the steering exist; QEMU is starting
        "inside the VM",  # and QEMU runs
    ],
)
def test_an_interrupted_demo_exits_130_and_leaves_nothing(heading: str) -> None:
    if "VM" in heading and (problem := qemu_problem()) is not None:
        pytest.skip(f"the demo skips its VM here: {problem}")
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
