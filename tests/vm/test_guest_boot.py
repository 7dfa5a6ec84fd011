"""A real QEMU guest (Debian's kernel and busybox, TCG) on a bridge, without RoleCall: the
machinery the VM tests stand on. One boot for the module: the guest has a NIC on the bridge, where
a "cloud" namespace of the test's own serves HTTP (and stands in for a metadata service behind
the guest's gateway), and a second NIC on a tap of its own."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from demo.vmguest import Nic, VmError, VmGuest, delete_link
from demo.vmimage import GuestImage
from tests.vm import network
from tests.vm.network import CloudServer

CLOUD_ADDRESS = "169.254.77.1/24"
GUEST_ADDRESS = "169.254.77.2/24"
SECOND_ADDRESS = "169.254.78.2/24"


@dataclass
class Setup:
    vm: VmGuest
    cloud: CloudServer
    first: Nic
    second: Nic


@pytest.fixture(scope="module")
def setup(image: GuestImage) -> Iterator[Setup]:
    made: list[str] = []
    cloud: CloudServer | None = None
    try:
        bridge = network.bridge()
        made.append(bridge)
        cloud = CloudServer(bridge, CLOUD_ADDRESS, metadata=True)
        first = Nic(network.tap(bridge), address=GUEST_ADDRESS)
        made.append(first.tap)
        second = Nic(network.tap(), address=SECOND_ADDRESS)
        made.append(second.tap)
        gateway = CLOUD_ADDRESS.split("/")[0]
        with network.guest(image, [first, second], gateway=gateway) as vm:
            yield Setup(vm, cloud, first, second)
    finally:
        if cloud is not None:
            cloud.close()
        for name in reversed(made):
            delete_link(name)


def test_the_guest_fetches_a_page_from_a_server_on_its_bridge(setup: Setup) -> None:
    status, body = setup.vm.http("GET", setup.cloud.address, 80, "/index.html")
    assert (status, body) == (200, setup.cloud.page)
    assert setup.cloud.requests[-1].client == setup.first.ip


def test_the_guests_first_nic_has_the_mac_and_address_it_was_given(setup: Setup) -> None:
    status, output = setup.vm.run("cat /sys/class/net/eth0/address; ip -o -4 addr show dev eth0")
    assert status == 0, output
    assert output.splitlines()[0] == setup.first.mac
    assert f"inet {GUEST_ADDRESS} " in output
    # Seen from the bridge: the guest's frames carry that MAC.
    setup.vm.http("GET", setup.cloud.address, 80, "/")
    assert setup.cloud.neighbour_mac(setup.first.ip or "") == setup.first.mac


def test_a_second_nic_has_its_own_mac_and_address(setup: Setup) -> None:
    status, output = setup.vm.run("cat /sys/class/net/eth1/address; ip -o -4 addr show dev eth1")
    assert status == 0, output
    assert output.splitlines()[0] == setup.second.mac
    assert f"inet {SECOND_ADDRESS} " in output


def test_the_gateway_from_the_command_line_is_the_default_route(setup: Setup) -> None:
    status, output = setup.vm.run("ip route show default")
    assert status == 0, output
    assert output.startswith(f"default via {setup.cloud.address} dev eth0")


def test_the_imds_helpers_send_imdsv2_requests(setup: Setup) -> None:
    """/bin/imds through the guest's gateway to the stand-in metadata service: the token PUT
    with its TTL header, then a GET carrying the token it answered."""
    status, token = setup.vm.imds_token(ttl=60)
    assert (status, token) == (200, setup.cloud.token)
    put = setup.cloud.requests[-1]
    assert (put.method, put.path) == ("PUT", "/latest/api/token")
    assert put.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "60"
    status, body = setup.vm.imds_get("/latest/meta-data/iam/info", token)
    assert (status, body) == (200, setup.cloud.page)
    get = setup.cloud.requests[-1]
    assert (get.method, get.path) == ("GET", "/latest/meta-data/iam/info")
    assert get.headers["X-aws-ec2-metadata-token"] == setup.cloud.token


def test_http_says_0_and_why_when_nothing_answers(setup: Setup) -> None:
    status, body = setup.vm.http("GET", setup.cloud.address, 81, "/")
    assert status == 0
    assert "refused" in body


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("printf 'a\\nb'; exit 3", (3, "a\nb")),
        ("echo out; echo err >&2", (0, "out\nerr\n")),
        ("printf '\\r\\n\\003\\004@@rc-end x 0\\n'", (0, "\r\n\x03\x04@@rc-end x 0\n")),
        ("cat", (0, "")),  # stdin is empty: the console is not read by the command
    ],
)
def test_a_command_gives_its_exit_status_and_exact_output(
    setup: Setup, command: str, expected: tuple[int, str]
) -> None:
    assert setup.vm.run(command) == expected


def test_a_command_that_runs_out_of_time_is_stopped_and_the_shell_goes_on(setup: Setup) -> None:
    status, output = setup.vm.run("echo started; sleep 30; echo not reached", timeout=1)
    assert status == 143
    assert output.startswith("started\n") and "not reached" not in output
    assert setup.vm.run("echo still here") == (0, "still here\n")


def test_a_boot_that_fails_says_why_with_the_console(image: GuestImage) -> None:
    """/init cannot route to a gateway on no network: the error says which step, QEMU is gone."""
    vm = VmGuest(image, gateway="169.254.79.1")
    network.MADE.guests.append(vm)
    with pytest.raises(
        VmError, match=re.escape("init failed: ip route add default via 169.254.79.1")
    ) as failure:
        vm.boot()
    assert "--- console" in str(failure.value)
    assert not vm.running


def test_a_missing_tap_is_named_before_qemu_starts(image: GuestImage) -> None:
    vm = VmGuest(image, [Nic("rctap-missing0")])
    with pytest.raises(VmError, match="no tap rctap-missing0"):
        vm.boot()
    assert vm.process is None
