"""The guest as an operator boots it without a program driving its console (as
vagrant/scripts/guest.sh does under libvirt): ``rolecall.hostname``, a script run once at boot
(``rolecall.run``, its output framed on the console) and an interactive shell
(``rolecall.console=shell``) that answers what is typed on the serial console; and the boot
script guest.sh gives the guest, run in it against a stand-in metadata service."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest

from demo import vmguest
from demo.vmimage import GuestImage
from tests.vm import network
from tests.vm.network import CloudServer

GUEST_SH = Path(__file__).resolve().parents[2] / "vagrant" / "scripts" / "guest.sh"
HOSTNAME = "i-0123456789abcdef0"


def _guest(image: GuestImage, tap: str, arguments: list[str]) -> vmguest.VmGuest:
    vm = vmguest.VmGuest(image, [vmguest.Nic(tap)], kernel_arguments=arguments)
    network.MADE.guests.append(vm)  # for the end-of-session check
    return vm


def _argument(script: str) -> str:
    return "rolecall.run=" + base64.b64encode(script.encode()).decode()


def _wait_for(vm: vmguest.VmGuest, pattern: str, timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, vm.console, re.DOTALL)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} on the console:\n{vm.console[-3000:]}")


def test_the_boot_script_runs_once_and_the_shell_answers_on_the_console(
    image: GuestImage,
) -> None:
    tap = network.tap()
    try:
        arguments = [
            f"rolecall.hostname={HOSTNAME}",
            _argument("echo run-$((40 + 2)); hostname; ip -o link show eth0 | wc -l; exit 3"),
            "rolecall.console=shell",
        ]
        with _guest(image, tap, arguments) as vm:
            ran = _wait_for(vm, r"@@rc-run-begin\r?\n(.*?)@@rc-run-end (\d+)")
            assert ran.group(1).split() == ["run-42", HOSTNAME, "1"]
            assert ran.group(2) == "3"
            assert vm.console.index("@@rc-run-end") < vm.console.index("@@rc-ready")
            _wait_for(vm, re.escape(f"{HOSTNAME}:") + r"\S+# ")
            assert vm.process is not None and vm.process.stdin is not None
            vm.process.stdin.write(b"echo typed-$((6 * 7)) $(hostname)\n")
            vm.process.stdin.flush()
            _wait_for(vm, rf"\ntyped-42 {HOSTNAME}\r?\n")
    finally:
        vmguest.delete_link(tap)


def test_a_boot_script_that_is_not_base64_stops_the_boot_naming_it(image: GuestImage) -> None:
    tap = network.tap()
    try:
        vm = _guest(image, tap, ["rolecall.run=%%%"])
        try:
            with pytest.raises(vmguest.VmError, match=r"rolecall\.run is not base64"):
                vm.boot()
            assert not vm.running
        finally:
            vm.close()
    finally:
        vmguest.delete_link(tap)


def boot_script() -> str:
    """The script vagrant/scripts/guest.sh gives the guest (its BOOT_SCRIPT here-document)."""
    lines = GUEST_SH.read_text(encoding="utf-8").splitlines()
    start = next(n for n, line in enumerate(lines) if line.endswith("<<'BOOT_SCRIPT'"))
    return "\n".join(lines[start + 1 : lines.index("BOOT_SCRIPT", start)]) + "\n"


def test_the_vagrant_guests_boot_script_shows_token_info_and_shortened_credentials(
    image: GuestImage,
) -> None:
    made: list[str] = []
    cloud: CloudServer | None = None
    try:
        bridge = network.bridge()
        made.append(bridge)
        cloud = CloudServer(bridge, "169.254.77.1/24", metadata=True)
        # Line 1 of any page is what security-credentials/ lists: the role.
        cloud.page = 's3access\n"SecretAccessKey" : "abcdefghij",\n"Token" : "klmnopqrst"\n'
        tap = network.tap(bridge)
        made.append(tap)
        nic = vmguest.Nic(tap, address="169.254.77.2/24")
        vm = vmguest.VmGuest(
            image, [nic], gateway="169.254.77.1", kernel_arguments=[_argument(boot_script())]
        )
        network.MADE.guests.append(vm)
        with vm:
            ran = _wait_for(vm, r"@@rc-run-begin\r?\n(.*?)@@rc-run-end (\d+)")
        shown = ran.group(1).replace("\r\n", "\n")
        assert ran.group(2) == "0", shown
        assert shown.startswith(f"$ imds token 21600\n200\n{cloud.token[:4]}...\n"), shown
        assert "$ imds get /latest/meta-data/iam/info $TOKEN\n200\ns3access\n" in shown
        assert "$ imds get /latest/meta-data/iam/security-credentials/s3access $TOKEN\n" in shown
        credentials = shown.split("security-credentials/s3access $TOKEN\n", 1)[1]
        assert '"SecretAccessKey" : "abcd...",\n"Token" : "klmn..."' in credentials, shown
        assert "efghij" not in credentials and "opqrst" not in credentials
        put, *gets = cloud.requests
        assert (put.method, put.path) == ("PUT", "/latest/api/token")
        assert put.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
        assert [(get.method, get.path) for get in gets] == [
            ("GET", "/latest/meta-data/iam/info"),
            ("GET", "/latest/meta-data/iam/security-credentials/"),
            ("GET", "/latest/meta-data/iam/security-credentials/s3access"),
        ]
        assert {get.headers["X-aws-ec2-metadata-token"] for get in gets} == {cloud.token}
    finally:
        if cloud is not None:
            cloud.close()
        for name in reversed(made):
            vmguest.delete_link(name)
