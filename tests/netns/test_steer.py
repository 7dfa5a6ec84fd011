"""Steering with stand-in VMs (issue 13, items 1 to 3): a VM is a namespace whose veth's host end
sits on a test bridge in the host namespace, as a libvirt VM's tap sits on the cloud's bridge;
that host end is the tap the hypervisor plugs. A "cloud" namespace on the same bridge stands for
the rest of the network. The real agent steers; the VM asks 169.254.169.254 with curl.

Every namespace, link, bridge and thread made here goes in a fixture's teardown, also when a test
fails (the session's leak check covers the agent's own ``rcv…`` veths).
"""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import netns, nftables, steer
from tests.netns.harness import (
    MADE,
    Cloud,
    Guest,
    add_namespace,
    delete_namespace,
    ip,
    link,
    namespace_of,
    namespaces,
    unique,
    wait_until,
)

INFO = "/latest/meta-data/iam/info"
SUBNET = "169.254.77"
CLOUD_ADDRESS = f"{SUBNET}.1"
CLOUD_PORT = 8080


@dataclass
class StandIn:
    """A stand-in VM: its namespace, its tap on the bridge, its MAC and address."""

    guest: Guest
    tap: str
    mac: str

    @property
    def name(self) -> str:
        return self.guest.name


class Network:
    """A bridge in the host namespace with a cloud namespace on it (an HTTP server on
    CLOUD_ADDRESS:CLOUD_PORT) and the stand-in VMs the test adds."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bridge = unique("rcb")
        self.taps: list[str] = []
        self.namespaces: list[str] = []
        self._next = 10
        ip("link", "add", self.bridge, "type", "bridge")
        ip("link", "set", self.bridge, "up")
        self.cloud = self._attach(CLOUD_ADDRESS)[0]
        with netns.inside(self.cloud):
            self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((CLOUD_ADDRESS, CLOUD_PORT))
        self._server.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="cloud server")
        MADE.threads.append(self._thread)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with client:
                client.settimeout(5)
                try:
                    client.recv(4096)
                    client.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\ncloud")
                except OSError:
                    pass

    def _attach(self, address: str) -> tuple[str, str, str]:
        """A namespace on the bridge with `address`/24: (namespace, tap, MAC)."""
        name = add_namespace(unique("rcg-"))
        self.namespaces.append(name)
        tap = unique("rct")
        ip("link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", name)
        self.taps.append(tap)
        ip("link", "set", tap, "master", self.bridge, "up")
        ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        shown = json.loads(ip("-n", name, "-j", "link", "show", "eth0").stdout)
        return name, tap, str(shown[0]["address"])

    def vm(self) -> StandIn:
        """A stand-in VM on the bridge, its gateway the cloud namespace."""
        self._next += 1
        address = f"{SUBNET}.{self._next}"
        name, tap, mac = self._attach(address)
        ip("-n", name, "route", "add", "default", "via", CLOUD_ADDRESS)
        home = self.workdir / name
        home.mkdir()
        return StandIn(Guest(name, home, address, ""), tap, mac)

    def close(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        except OSError:
            pass
        self._server.close()
        self._thread.join(5)
        for name in self.namespaces:
            delete_namespace(name)
        for tap in self.taps:
            ip("link", "delete", tap, check=False)
        ip("link", "delete", self.bridge, check=False)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    made = Network(tmp_path)
    try:
        yield made
    finally:
        made.close()


def cloud_answers(vm: StandIn) -> bool:
    """Whether the VM's other traffic flows: an HTTP GET to the cloud namespace."""
    result = vm.guest.curl(f"http://{CLOUD_ADDRESS}:{CLOUD_PORT}/", max_time=2)
    return result.returncode == 0 and result.stdout.startswith("cloud")


def role_of(vm: StandIn) -> str:
    """The instance profile ARN the VM's metadata service names (IMDSv2), "" if none answers."""
    status, token = vm.guest.token(max_time=2)
    if status != 200:
        return ""
    status, body = vm.guest.get(INFO, token, max_time=2)
    return str(json.loads(body)["InstanceProfileArn"]) if status == 200 else ""


def plug(cloud: Cloud, instance_id: str, tap: str) -> str:
    result = cloud.agent.command("plug", instance_id, tap)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tables() -> list[str]:
    return steer.tables()


def root_links(name: str) -> int:
    return len(json.loads(ip("-j", "link", "show", "dev", name, check=False).stdout or "[]"))


def rules_of(namespace: str) -> int:
    listing = json.loads(
        subprocess.run(
            ["nft", "-j", "list", "table", "netdev", steer.table_name(namespace)],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout
    )  # fmt: skip
    return sum(1 for entry in listing["nftables"] if "rule" in entry)


def imds0_received(namespace: str) -> int:
    shown = json.loads(ip("-n", namespace, "-s", "-j", "link", "show", "imds0").stdout)
    return int(shown[0]["stats64"]["rx"]["packets"])


@pytest.fixture
def served(cloud: Cloud, network: Network) -> tuple[Cloud, Network, str, str, StandIn]:
    """An instance with a role, served, and a stand-in VM plugged for it: (cloud, network,
    instance id, profile ARN, VM)."""
    name, arn = cloud.profile()
    instance_id = cloud.launch(name)
    cloud.wait_served(instance_id)
    vm = network.vm()
    assert "steered" in plug(cloud, instance_id, vm.tap)
    return cloud, network, instance_id, arn, vm


def test_a_vm_on_the_bridge_gets_its_instances_role_through_the_steering(
    served: tuple[Cloud, Network, str, str, StandIn],
) -> None:
    cloud, _network, instance_id, arn, vm = served
    assert wait_until(lambda: role_of(vm), 10, "the VM's role") == arn
    assert cloud_answers(vm)
    namespace = namespace_of(instance_id)
    assert tables().count(namespace) == 1
    assert root_links(steer.host_end(namespace)) == 1
    cloud.agent.logged(f"steered {vm.tap} into namespace {namespace}")


def test_a_second_vm_gets_its_own_role_and_no_trick_reaches_the_first_namespace(
    served: tuple[Cloud, Network, str, str, StandIn],
) -> None:
    cloud, network, first_id, first_arn, first = served
    name, second_arn = cloud.profile()
    second_id = cloud.launch(name)
    cloud.wait_served(second_id)
    second = network.vm()
    plug(cloud, second_id, second.tap)
    assert wait_until(lambda: role_of(second), 10, "the second VM's role") == second_arn
    assert role_of(first) == first_arn
    first_namespace, second_namespace = namespace_of(first_id), namespace_of(second_id)
    before = imds0_received(first_namespace)
    tricks = Tricks(second, first_namespace, second_namespace)
    # ARP for 169.254.169.254 is answered by the second VM's own namespace only.
    assert tricks.arp_owner() == steer.inside_address(second_namespace)
    # Frames to the first namespace's imds0 MAC, to its veth's host end, with the metadata
    # address, another address or no IP at all; and with the first VM's MAC and IP as source.
    tricks.send_all(first)
    assert imds0_received(first_namespace) == before
    # With the first VM's MAC and address as its own, the second VM still gets its own role.
    ip("-n", second.name, "link", "set", "eth0", "address", first.mac)
    ip("-n", second.name, "addr", "flush", "dev", "eth0")
    ip("-n", second.name, "addr", "add", f"{first.guest.address}/24", "dev", "eth0")
    ip("-n", second.name, "route", "add", "default", "via", CLOUD_ADDRESS)
    ip("-n", second_namespace, "neigh", "flush", "all")  # as if its entry had gone stale
    assert role_of(second) == second_arn
    assert imds0_received(first_namespace) == before


class Tricks:
    """Raw frames from inside a stand-in VM (AF_PACKET on its eth0)."""

    def __init__(self, vm: StandIn, target: str, own: str) -> None:
        self.vm = vm
        self.target = target
        self.own = own

    def _socket(self) -> socket.socket:
        with netns.inside(self.vm.name):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
            raw.bind(("eth0", 0))
        raw.settimeout(0.2)
        return raw

    def arp_owner(self) -> str:
        """The MAC that answers the VM's ARP request for 169.254.169.254."""
        raw = self._socket()
        try:
            mine = _mac(self.vm.mac)
            sender = socket.inet_aton(self.vm.guest.address)
            request = (
                b"\xff" * 6 + mine + b"\x08\x06"
                + b"\x00\x01\x08\x00\x06\x04\x00\x01" + mine + sender
                + b"\x00" * 6 + socket.inet_aton("169.254.169.254")
            )  # fmt: skip
            for _ in range(20):
                raw.send(request)
                try:
                    while True:
                        frame = raw.recv(2048)
                        if frame[20:22] == b"\x00\x02" and frame[28:32] == socket.inet_aton(
                            "169.254.169.254"
                        ):
                            return ":".join(f"{byte:02x}" for byte in frame[22:28])
                except TimeoutError:
                    continue
        finally:
            raw.close()
        return ""

    def send_all(self, first: StandIn) -> None:
        imds0 = _mac(steer.inside_address(self.target))
        host_end = json.loads(ip("-j", "link", "show", steer.host_end(self.target)).stdout)
        veth = _mac(str(host_end[0]["address"]))
        mine = _mac(self.vm.mac)
        spoofed = _mac(first.mac)
        frames = []
        sources = ((mine, self.vm.guest.address), (spoofed, first.guest.address))
        for destination in (imds0, veth):
            for source, source_ip in sources:
                for target_ip in ("169.254.169.254", f"{SUBNET}.99"):
                    frames.append(destination + source + b"\x08\x00" + _udp(source_ip, target_ip))
                frames.append(destination + source + b"\x88\xb5" + b"\x00" * 46)  # no IP at all
                arp = (
                    b"\x00\x01\x08\x00\x06\x04\x00\x01" + source + socket.inet_aton(source_ip)
                    + b"\x00" * 6 + socket.inet_aton("169.254.169.254")
                )  # fmt: skip
                frames.append(destination + source + b"\x08\x06" + arp)
        with netns.inside(self.vm.name):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            raw.bind(("eth0", 0))
        try:
            for frame in frames:
                for _ in range(3):
                    raw.send(frame)
        finally:
            raw.close()


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _udp(source: str, destination: str) -> bytes:
    """An IPv4 UDP datagram to port 80 (checksums left for nobody to check: the kernel counts
    the frame as received on imds0 before it looks at them)."""
    payload = b"trick"
    udp = (12345).to_bytes(2, "big") + (80).to_bytes(2, "big")
    udp += (8 + len(payload)).to_bytes(2, "big") + b"\x00\x00" + payload
    header = bytearray(
        b"\x45\x00" + (20 + len(udp)).to_bytes(2, "big") + b"\x00\x00\x40\x00\x40\x11\x00\x00"
        + socket.inet_aton(source) + socket.inet_aton(destination)
    )  # fmt: skip
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, 20, 2))
    total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + udp


def test_a_plug_before_the_assignment_is_pending_and_steered_once_it_comes(
    cloud: Cloud, network: Network
) -> None:
    name, arn = cloud.profile()
    cloud.agent.stop()
    instance_id = cloud.launch(name)
    cloud.controller.stop()
    cloud.agent.start()
    vm = network.vm()
    assert "pending" in plug(cloud, instance_id, vm.tap)
    cloud.controller.start()
    assert wait_until(lambda: role_of(vm), 20, "the VM's role once assigned") == arn


def test_a_vm_started_while_the_agent_is_down_is_steered_when_it_starts(
    cloud: Cloud, network: Network
) -> None:
    """The hook runs while no agent listens: its plug is spooled, and the agent takes it at
    start, so the VM gets its metadata service without anyone plugging again."""
    name, arn = cloud.profile()
    instance_id = cloud.launch(name)
    cloud.wait_served(instance_id)
    cloud.agent.stop()
    vm = network.vm()
    result = cloud.agent.command("plug", instance_id, vm.tap)
    assert result.returncode == 0 and "spooled" in result.stdout, result.stderr
    cloud.agent.start()
    assert wait_until(lambda: role_of(vm), 15, "the VM's role once the agent is back") == arn
    cloud.agent.logged(f"took the spooled plug of {instance_id}")


def test_a_vm_migrated_in_is_pending_until_its_instance_is_moved_here(
    cloud: Cloud, network: Network
) -> None:
    """A live migration's destination: the hook plugs when the VM runs here, whichever comes
    first of that and ModifyInstancePlacement."""
    name, arn = cloud.profile()
    source = unique("hv-")
    cloud.controller.enroll(source, cloud.workdir / "source-node")
    instance_id = cloud.launch(name, Placement={"HostId": source})
    vm = network.vm()
    assert "pending" in plug(cloud, instance_id, vm.tap)
    assert role_of(vm) == ""
    cloud.ec2.modify_instance_placement(InstanceId=instance_id, HostId=cloud.node)
    assert wait_until(lambda: role_of(vm), 15, "the VM's role once moved here") == arn


def test_a_restarted_agent_adopts_the_steering_without_doubling_anything(
    served: tuple[Cloud, Network, str, str, StandIn],
) -> None:
    cloud, _network, instance_id, arn, vm = served
    namespace = namespace_of(instance_id)
    assert wait_until(lambda: role_of(vm), 10, "the VM's role") == arn
    veth = json.loads(ip("-j", "link", "show", steer.host_end(namespace)).stdout)[0]["ifindex"]
    cloud.agent.stop()
    assert role_of(vm) == ""  # nothing listens while the agent is away...
    assert tables().count(namespace) == 1  # ...but the steering stays
    cloud.agent.start()
    assert wait_until(lambda: role_of(vm), 15, "the VM's role after the restart") == arn
    assert tables().count(namespace) == 1
    assert rules_of(namespace) == 3
    adopted = f"adopted the steering of {vm.tap} into namespace {namespace}"
    cloud.agent.logged(adopted)
    found = json.loads(ip("-j", "link", "show", steer.host_end(namespace)).stdout)
    assert [link["ifindex"] for link in found] == [veth]  # the same veth, kept
    shown = ip("-n", namespace, "-o", "link").stdout
    assert shown.count("imds0") == 1


def test_unplug_removes_the_table_and_the_veth_and_the_vm_keeps_its_network(
    served: tuple[Cloud, Network, str, str, StandIn],
) -> None:
    cloud, _network, instance_id, arn, vm = served
    namespace = namespace_of(instance_id)
    assert wait_until(lambda: role_of(vm), 10, "the VM's role") == arn
    result = cloud.agent.command("unplug", instance_id, vm.tap)
    assert result.returncode == 0 and "unplugged" in result.stdout, result.stderr
    assert namespace not in tables()
    assert root_links(steer.host_end(namespace)) == 0
    assert "imds0" not in ip("-n", namespace, "-o", "link").stdout
    assert role_of(vm) == ""
    assert cloud_answers(vm)


def test_terminating_the_instance_leaves_no_table_no_veth_and_no_namespace(
    served: tuple[Cloud, Network, str, str, StandIn],
) -> None:
    cloud, _network, instance_id, arn, vm = served
    namespace = namespace_of(instance_id)
    assert wait_until(lambda: role_of(vm), 10, "the VM's role") == arn
    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    wait_until(lambda: namespace not in namespaces(), 10, f"{namespace} to be removed")
    assert namespace not in tables()
    assert root_links(steer.host_end(namespace)) == 0
    assert cloud_answers(vm)


def test_deleting_the_namespace_never_cuts_the_vms_network_and_it_is_steered_again(
    served: tuple[Cloud, Network, str, str, StandIn],
) -> None:
    cloud, _network, instance_id, arn, vm = served
    namespace = namespace_of(instance_id)
    assert wait_until(lambda: role_of(vm), 10, "the VM's role") == arn
    ip("netns", "delete", namespace)  # unnamed; it lives while the agent's socket holds it
    assert cloud_answers(vm)
    cloud.agent.stop()  # the namespace goes with the serving process's socket
    assert cloud_answers(vm)
    cloud.agent.start()  # the next prepare makes it again, and steers into the new one
    assert wait_until(lambda: role_of(vm), 15, "the VM's role in the new namespace") == arn
    assert cloud_answers(vm)
    assert tables().count(namespace) == 1
    assert root_links(steer.host_end(namespace)) == 1
    assert ip("-n", namespace, "-o", "link").stdout.count("imds0") == 1


def test_the_hop_limit_holds_behind_the_vm(
    served: tuple[Cloud, Network, str, str, StandIn],
) -> None:
    """A container behind the VM (its own namespace, NATed by the VM as Docker's bridge does)
    gets no IMDSv2 token at hop limit 1: the VM's forwarding takes the answer's TTL to 0."""
    _cloud, network, _instance_id, arn, vm = served
    assert wait_until(lambda: role_of(vm), 10, "the VM's role") == arn
    behind = add_namespace(unique("rcg-"))
    try:
        behind_address, vm_side = link(behind, vm.name)
        ip("-n", behind, "route", "add", "default", "via", vm_side)
        subprocess.run(
            ["ip", "netns", "exec", vm.name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        nat = (
            "table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
            '  oifname "eth0" masquerade\n }\n}\n'
        )
        subprocess.run(
            ["ip", "netns", "exec", vm.name, "nft", "-f", "-"],
            input=nat, text=True, check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        home = network.workdir / behind
        home.mkdir()
        container = Guest(behind, home, behind_address, "")
        # The container reaches the cloud through the VM: the NAT works...
        assert container.curl(f"http://{CLOUD_ADDRESS}:{CLOUD_PORT}/").stdout.startswith("cloud")
        # ...but the token's answer (TTL 1) dies in the VM's forwarding.
        assert container.token(max_time=2)[0] == 0
        assert vm.guest.token()[0] == 200
    finally:
        delete_namespace(behind)


def test_a_namespace_holding_a_tap_stays_until_the_tap_is_gone(
    cloud: Cloud, network: Network
) -> None:
    """Issue 13 item 3: a real tap moved into the namespace the agent made is never destroyed
    by the agent; the namespace goes at the first reconcile after the tap is gone."""
    instance_id = cloud.launch()
    namespace = cloud.wait_served(instance_id)
    tap = unique("rct")
    ip("tuntap", "add", "dev", tap, "mode", "tap")
    try:
        ip("link", "set", tap, "netns", namespace)
        cloud.ec2.terminate_instances(InstanceIds=[instance_id])
        cloud.agent.process.wait_for(  # type: ignore[union-attr]
            f"left namespace {namespace} in place: it holds link {tap}", 15
        )
        assert namespace in namespaces()
        assert tap in ip("-n", namespace, "-o", "link").stdout
        assert "169.254.169.254" not in ip("-n", namespace, "-o", "addr").stdout
        ip("-n", namespace, "link", "delete", tap)
        other = cloud.launch()  # a reconcile
        cloud.wait_served(other)
        wait_until(lambda: namespace not in namespaces(), 15, f"{namespace} to be removed")
    finally:
        ip("link", "delete", tap, check=False)
        if namespace in namespaces():
            ip("-n", namespace, "link", "delete", tap, check=False)


def test_the_hook_plugs_at_started_and_unplugs_at_release(cloud: Cloud, network: Network) -> None:
    name, arn = cloud.profile()
    instance_id = cloud.launch(name)
    namespace = cloud.wait_served(instance_id)
    vm = network.vm()
    xml = (
        f"<domain type='kvm'><name>vm-{uuid.uuid4().hex[:6]}</name><metadata>"
        f"<rolecall:instance xmlns:rolecall='urn:rolecall:libvirt:1' id='{instance_id}'"
        f" mac='{vm.mac}'/></metadata><devices><interface type='bridge'>"
        f"<mac address='{vm.mac}'/><source bridge='{network.bridge}'/><target dev='{vm.tap}'/>"
        "</interface></devices></domain>"
    )

    def hook(operation: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cloud.agent.command_argv("hook"), "vm", operation, "begin", "-"],
            input=xml, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    started = hook("started")
    assert started.returncode == 0 and "steered" in started.stderr, started.stderr
    assert wait_until(lambda: role_of(vm), 10, "the VM's role") == arn
    assert hook("prepare").stderr == ""
    released = hook("release")
    assert released.returncode == 0 and "unplugged" in released.stderr, released.stderr
    assert namespace not in tables()


# -- the nf_tables batches themselves, against nft (no agent) ------------------------------------


@dataclass
class Wired:
    """An instance-like namespace and a stand-in tap (a veth pair in the host namespace)."""

    namespace: str
    tap: str


@pytest.fixture
def wired() -> Iterator[Wired]:
    namespace = add_namespace(unique("rcg-"))
    tap = unique("rct")
    try:
        ip("link", "add", tap, "type", "veth", "peer", "name", f"rcu{tap[3:]}")
        ip("link", "set", tap, "up")
        yield Wired(namespace, tap)
    finally:
        try:
            steer.remove(namespace)
        finally:
            ip("link", "delete", tap, check=False)
            delete_namespace(namespace)


def nft(*arguments: str, text: str | None = None) -> str:
    result = subprocess.run(
        ["nft", *arguments], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def kernel_view(namespace: str) -> tuple[list[dict[str, object]], str]:
    """What the kernel holds for `namespace`'s table: nft's JSON listing without handles, and
    the rules' expressions as nft prints them from the kernel (``--debug=netlink``)."""
    table = steer.table_name(namespace)
    entries = json.loads(nft("-j", "list", "table", "netdev", table))["nftables"]
    for entry in entries:
        for value in entry.values():
            if isinstance(value, dict):
                value.pop("handle", None)
    listed = nft("--debug=netlink", "list", "table", "netdev", table)
    # Each rule's head line ends with its handle (and the previous rule's): those go.
    bytecode = re.sub(rf"^(netdev {table} \w+)( \d+)+$", r"\1", listed, flags=re.MULTILINE)
    return [entry for entry in entries if "metainfo" not in entry], bytecode


def test_netlink_installs_exactly_what_nft_makes_of_the_ruleset_text(wired: Wired) -> None:
    steer.install(wired.namespace, wired.tap)
    installed = kernel_view(wired.namespace)
    assert sum(1 for entry in installed[0] if "rule" in entry) == 3
    assert "[ fwd sreg_dev 1 ]" in installed[1]
    # The same table from the documented text, by nft, replacing it whole.
    nft("-f", "-", text=steer.ruleset(wired.namespace, wired.tap))
    assert kernel_view(wired.namespace) == installed
    assert steer.tables().count(wired.namespace) == 1
    assert f'iif "{wired.tap}" arp daddr ip 169.254.169.254' in nft(
        "list", "table", "netdev", steer.table_name(wired.namespace)
    )


def test_installing_again_replaces_the_table_and_removal_leaves_none(wired: Wired) -> None:
    steer.install(wired.namespace, wired.tap)
    first = kernel_view(wired.namespace)
    steer.install(wired.namespace, wired.tap)
    assert kernel_view(wired.namespace) == first
    assert steer.tables().count(wired.namespace) == 1
    steer.remove(wired.namespace)
    assert wired.namespace not in steer.tables()
    assert root_links(steer.host_end(wired.namespace)) == 0
    steer.remove(wired.namespace)  # nothing there: still fine


def test_a_tap_gone_before_the_install_is_a_clear_error_and_nothing_is_made(
    wired: Wired,
) -> None:
    ip("link", "delete", wired.tap)
    with pytest.raises(steer.SteerError, match=rf"there is no link {wired.tap}$"):
        steer.install(wired.namespace, wired.tap)
    assert wired.namespace not in steer.tables()
    assert root_links(steer.host_end(wired.namespace)) == 0


def test_a_tap_that_is_another_device_now_is_not_steered(wired: Wired) -> None:
    index = json.loads(ip("-j", "link", "show", wired.tap).stdout)[0]["ifindex"]
    with pytest.raises(steer.SteerError, match=rf"{wired.tap} is another device now"):
        steer.install(wired.namespace, wired.tap, index + 1000)
    assert wired.namespace not in steer.tables()
    steer.install(wired.namespace, wired.tap, index)
    assert wired.namespace in steer.tables()


def test_a_refused_batch_changes_nothing_and_names_the_refused_request(wired: Wired) -> None:
    table = steer.table_name(wired.namespace)
    steer.ensure_veth(wired.namespace)
    indexes = steer.links()
    veth = indexes[steer.host_end(wired.namespace)]
    batch = steer.install_batch(wired.namespace, wired.tap, indexes[wired.tap], veth)
    refused = nftables.new_rule(nftables.NETDEV, table, "nowhere", [nftables.forward()], "bad")
    # Nothing installed yet: the table the batch made and filled is gone with it.
    with nftables.Nftables() as kernel, pytest.raises(nftables.TransactionError) as raised:
        kernel.commit([*batch, refused])
    assert raised.value.errno == errno.ENOENT
    assert f"refused NEWRULE in chain nowhere of table {table} (bad) (request 9 of 9)" in str(
        raised.value
    )
    assert wired.namespace not in steer.tables()
    # Installed: a refused replacement leaves the installed table exactly as it was.
    steer.install(wired.namespace, wired.tap)
    before = kernel_view(wired.namespace)
    with nftables.Nftables() as kernel, pytest.raises(nftables.TransactionError):
        kernel.commit([*batch, refused])
    assert kernel_view(wired.namespace) == before
