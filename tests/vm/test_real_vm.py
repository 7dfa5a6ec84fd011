"""Issue 13 item 4: real QEMU guests (Debian's kernel and busybox, TCG) against a real controller
and agent, wired as an operator wires them with libvirt: a bridge (the cloud's), each VM's tap
on it, made before QEMU starts, and the shipped libvirt hook (``libvirt/qemu.d/rolecall``) run
as libvirtd runs it, with the domain's XML (made from ``libvirt/domain-example.xml``) on its
standard input: ``prepare``, ``start`` and ``started`` at boot, ``stopped`` and ``release`` at the
end. The hook finds ``rolecall-agent`` on its PATH: a wrapper that runs this checkout's code with
the test agent's configuration, as /etc/rolecall/agent.toml would give it on a node.

Each VM boots once for the module, one at a time; the tests run in this file's order (the last
one stops the VMs and checks that nothing is left). A "cloud" namespace of the test's own on the
bridge is the VMs' gateway and serves HTTP: the VMs' other traffic.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from agent import steer
from demo.vmguest import Nic, VmGuest, delete_link, link_exists, random_mac
from demo.vmimage import GuestImage
from tests.netns.harness import ACCOUNT_ID, Cloud, cloud_in, ip, namespace_of, namespaces
from tests.vm import network
from tests.vm.libvirt import Hook, domain_xml
from tests.vm.network import CloudServer
from tests.waiting import wait_until

SUBNET = "169.254.77"
CLOUD_ADDRESS = f"{SUBNET}.1"
INFO = "/latest/meta-data/iam/info"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"


@dataclass
class Vm:
    """A booted VM: its instance, role, NIC, its domain's XML and what the hook said."""

    guest: VmGuest
    name: str
    instance_id: str
    role: str
    profile_arn: str
    nic: Nic
    xml: str
    hooks: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    stopped: bool = False

    @property
    def namespace(self) -> str:
        return namespace_of(self.instance_id)


class Site:
    """The module's cloud (controller and agent), bridge, cloud server and hook."""

    def __init__(self, cloud: Cloud, bridge: str, server: CloudServer, workdir: Path) -> None:
        self.cloud = cloud
        self.bridge = bridge
        self.server = server
        self._hook = Hook(cloud.agent.config, workdir)

    def hook(
        self, vm_name: str, xml: str, operation: str, suboperation: str
    ) -> subprocess.CompletedProcess[str]:
        return self._hook.run(vm_name, xml, operation, suboperation)

    def boot(self, image: GuestImage, address: str) -> Vm:
        """An instance with a role of its own, and its VM started as libvirt starts a domain."""
        role, arn = self.cloud.profile()
        instance_id = self.cloud.launch(role, MetadataOptions={"HttpPutResponseHopLimit": 1})
        nic = Nic(network.tap(self.bridge), mac=random_mac(), address=f"{address}/24")
        name = f"vm-{instance_id}"
        xml = domain_xml(name, instance_id, nic, self.bridge)
        guest = network.guest(image, [nic], gateway=CLOUD_ADDRESS)
        vm = Vm(guest, name, instance_id, role, arn, nic, xml)
        for operation in ("prepare", "start"):  # before QEMU: nothing to do for RoleCall
            vm.hooks[operation] = self.hook(name, xml, operation, "begin")
        # "started" comes once QEMU runs (the guest still booting); QEMU itself is started from
        # this thread (it dies with the thread that started it).
        started = threading.Thread(target=self._started, args=(vm,), name=f"hook {name}")
        started.start()
        try:
            guest.boot()
        finally:
            started.join(30)
        return vm

    def _started(self, vm: Vm) -> None:
        deadline = time.monotonic() + 30
        while vm.guest.process is None and time.monotonic() < deadline:
            time.sleep(0.005)
        vm.hooks["started"] = self.hook(vm.name, vm.xml, "started", "begin")

    def stop(self, vm: Vm) -> None:
        """As libvirt stops a domain: QEMU ends, ``stopped``, the tap goes, ``release``."""
        if vm.stopped:
            return
        vm.stopped = True
        vm.guest.close()
        vm.hooks["stopped"] = self.hook(vm.name, vm.xml, "stopped", "end")
        delete_link(vm.nic.tap)
        vm.hooks["release"] = self.hook(vm.name, vm.xml, "release", "end")


@pytest.fixture(scope="module")
def site(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("real-vm")
    bridge = network.bridge()
    try:
        server = CloudServer(bridge, f"{CLOUD_ADDRESS}/24")
        try:
            with cloud_in(workdir) as cloud:
                yield Site(cloud, bridge, server, workdir)
        finally:
            server.close()
    finally:
        delete_link(bridge)


def _vm(site: Site, image: GuestImage, address: str) -> Iterator[Vm]:
    vm = site.boot(image, address)
    try:
        yield vm
    finally:
        site.stop(vm)


@pytest.fixture(scope="module")
def first(site: Site, image: GuestImage) -> Iterator[Vm]:
    yield from _vm(site, image, f"{SUBNET}.11")


@pytest.fixture(scope="module")
def second(site: Site, image: GuestImage, first: Vm) -> Iterator[Vm]:
    yield from _vm(site, image, f"{SUBNET}.12")


# -- what the guest sees -------------------------------------------------------------------------


def token_of(vm: Vm, timeout: int = 5) -> str:
    """An IMDSv2 token from inside the guest, "" when none comes in `timeout` seconds."""
    _, output = vm.guest.run(f"HTTP_TIMEOUT={timeout} imds token 300", timeout + 5)
    status, _, token = output.partition("\n")
    return token if status == "200" else ""


def info_of(vm: Vm) -> dict[str, Any]:
    """iam/info as the guest reads it (IMDSv2); {} if it cannot."""
    token = token_of(vm)
    if not token:
        return {}
    status, body = vm.guest.imds_get(INFO, token)
    return dict(json.loads(body)) if status == 200 else {}


def credentials_of(vm: Vm) -> tuple[str, dict[str, Any]]:
    """(the role the guest's metadata names, its credentials), read inside the guest."""
    token = token_of(vm)
    assert token, f"no token in {vm.name}"
    status, roles = vm.guest.imds_get(CREDENTIALS, token)
    assert status == 200, (status, roles)
    role = roles.strip()
    status, body = vm.guest.imds_get(CREDENTIALS + role, token)
    assert status == 200, (status, body)
    return role, dict(json.loads(body))


def caller_arn(site: Site, credentials: dict[str, Any]) -> str:
    """STS GetCallerIdentity at the controller, with credentials taken from a guest."""
    sts = boto3.client(
        "sts",
        endpoint_url=site.cloud.controller.url,
        region_name="us-east-1",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["Token"],
        config=Config(retries={"max_attempts": 1}),
    )
    return str(sts.get_caller_identity()["Arn"])


def imds0_received(namespace: str) -> int:
    shown = json.loads(ip("-n", namespace, "-s", "-j", "link", "show", "imds0").stdout)
    return int(shown[0]["stats64"]["rx"]["packets"])


def http_status(output: str) -> int:
    """The status /bin/http printed (0: no answer), past the shell's "Terminated" when its
    ``timeout`` stopped nc."""
    for line in output.splitlines():
        if line.isdigit():
            return int(line)
    raise AssertionError(f"no status in {output!r}")


def run(vm: Vm, command: str, timeout: float = 10) -> str:
    status, output = vm.guest.run(command, timeout)
    assert status == 0, f"{command!r} in {vm.name} exited {status}: {output}"
    return output


# -- the tests -----------------------------------------------------------------------------------


def test_the_hook_plugs_the_tap_at_started_and_nothing_before(site: Site, first: Vm) -> None:
    for operation in ("prepare", "start"):
        ran = first.hooks[operation]
        assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", ""), operation
    started = first.hooks["started"]
    assert started.returncode == 0, started.stderr
    assert f"plug {first.instance_id} {first.nic.tap}: steered" in started.stderr
    assert steer.tables().count(first.namespace) == 1, site.cloud.agent.output
    assert link_exists(steer.host_end(first.namespace))
    assert f"steered {first.nic.tap} into namespace {first.namespace}" in site.cloud.agent.output


def test_the_guest_gets_a_token_its_role_and_credentials_of_its_instance(
    site: Site, first: Vm
) -> None:
    info = wait_until(
        lambda: info_of(first),
        10,
        lambda: f"iam/info in {first.name}; the agent said:\n{site.cloud.agent.output}",
    )
    assert info["Code"] == "Success"
    assert info["InstanceProfileArn"] == first.profile_arn
    role, credentials = credentials_of(first)
    assert role == first.role
    assert credentials["Code"] == "Success"
    assert caller_arn(site, credentials) == (
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{first.role}/{first.instance_id}"
    )


def test_the_hop_limit_holds_for_a_namespace_behind_the_guest(first: Vm) -> None:
    """A namespace inside the guest, routed by it (a container behind the VM): its requests
    reach the metadata service (a GET without a token is answered 401) but the token's answer,
    sent with TTL 1, dies in the guest's forwarding; from the guest itself the token comes."""
    # The guest answers ARP for the namespace's address (proxy ARP, at once), so that the
    # instance's namespace, which routes everything on-link, reaches it through the guest.
    setup = r"""
        grep -q '^veth ' /proc/modules || insmod /lib/modules/veth.ko
        ip link add v0 type veth
        unshare -n sleep 120 &
        echo $! > /tmp/behind
        while [ "$(readlink /proc/$(cat /tmp/behind)/ns/net)" = "$(readlink /proc/self/ns/net)" ]
        do usleep 10000; done
        ip link set veth0 netns "$(cat /tmp/behind)"
        ip addr add 169.254.99.1/30 dev v0
        ip link set v0 up
        nsenter -t "$(cat /tmp/behind)" -n sh -c 'ip link set lo up &&
            ip addr add 169.254.99.2/30 dev veth0 && ip link set veth0 up &&
            ip route add default via 169.254.99.1'
        echo 1 > /proc/sys/net/ipv4/ip_forward
        echo 1 > /proc/sys/net/ipv4/conf/eth0/proxy_arp
        echo 0 > /proc/sys/net/ipv4/neigh/eth0/proxy_delay
    """
    behind = 'nsenter -t "$(cat /tmp/behind)" -n'
    try:
        run(first, setup)
        answered = run(first, f"{behind} http GET 169.254.169.254 80 /latest/meta-data/")
        assert http_status(answered) == 401, answered
        put = (
            f"HTTP_TIMEOUT=3 {behind} http PUT 169.254.169.254 80 /latest/api/token"
            " 'X-aws-ec2-metadata-token-ttl-seconds: 300'"
        )
        _, output = first.guest.run(put, 10)
        assert http_status(output) == 0, output  # connected, but no answer came
        assert token_of(first)
    finally:
        first.guest.run(
            "kill $(cat /tmp/behind); ip link del v0;"
            " echo 0 > /proc/sys/net/ipv4/ip_forward;"
            " echo 0 > /proc/sys/net/ipv4/conf/eth0/proxy_arp"
        )
        # The token's answer is never acknowledged: the agent's socket would retransmit it for
        # minutes, and, orphaned when the agent stops, keep the deleted namespace (and its veth)
        # alive in the kernel. Closed here, as TCP would in the end.
        subprocess.run(
            ["ip", "netns", "exec", first.namespace, "ss", "-K", "dst", "169.254.99.2"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
    assert "v0" not in run(first, "ip -o link")


def test_a_second_vm_on_the_bridge_gets_its_own_role_never_the_firsts(
    site: Site, first: Vm, second: Vm
) -> None:
    assert "steered" in second.hooks["started"].stderr, second.hooks["started"].stderr
    info = wait_until(
        lambda: info_of(second),
        10,
        lambda: f"iam/info in {second.name}; the agent said:\n{site.cloud.agent.output}",
    )
    assert info["InstanceProfileArn"] == second.profile_arn != first.profile_arn
    role, credentials = credentials_of(second)
    assert role == second.role
    assert caller_arn(site, credentials) == (
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{second.role}/{second.instance_id}"
    )
    # ...and the first VM still gets its own.
    assert info_of(first)["InstanceProfileArn"] == first.profile_arn
    role, credentials = credentials_of(first)
    assert (role, caller_arn(site, credentials)) == (
        first.role,
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{first.role}/{first.instance_id}",
    )


def test_no_mac_or_ip_trick_from_the_second_vm_reaches_the_first_namespace(
    first: Vm, second: Vm
) -> None:
    """From the second guest: the metadata address, and another, bound by static ARP entries to
    the first namespace's imds0 MAC and to its veth's host end; then the first VM's MAC and
    address as its own. It only ever reaches its own namespace; the first one receives nothing."""
    imds0 = steer.inside_address(first.namespace)
    shown = json.loads(ip("-j", "link", "show", steer.host_end(first.namespace)).stdout)
    host_end = str(shown[0]["address"])
    before = imds0_received(first.namespace)
    for mac in (imds0, host_end):
        # busybox's `ip neigh` only shows and flushes: its `arp -s` makes the static entries.
        run(
            second,
            f"ip route replace 169.254.169.254/32 dev eth0 &&"
            f" arp -i eth0 -s 169.254.169.254 {mac} && arp -i eth0 -s {SUBNET}.99 {mac}",
        )
        assert f"lladdr {mac} " in run(second, "ip neigh show 169.254.169.254")
        assert info_of(second)["InstanceProfileArn"] == second.profile_arn, mac
        _, output = second.guest.run(f"HTTP_TIMEOUT=2 http GET {SUBNET}.99 80 /", 10)
        assert http_status(output) == 0, output
    run(
        second,
        f"arp -i eth0 -d 169.254.169.254 && arp -i eth0 -d {SUBNET}.99 &&"
        " ip route del 169.254.169.254/32 dev eth0",
    )
    # The first VM's MAC and address.
    own = f"{second.nic.ip}/24"
    spoof = (
        "ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up &&"
        " ip addr flush dev eth0 && ip addr add {address} dev eth0 &&"
        f" ip route replace default via {CLOUD_ADDRESS}"
    )
    try:
        run(second, spoof.format(mac=first.nic.mac, address=f"{first.nic.ip}/24"))
        assert run(second, "cat /sys/class/net/eth0/address").strip() == first.nic.mac
        assert info_of(second)["InstanceProfileArn"] == second.profile_arn
    finally:
        run(second, spoof.format(mac=second.nic.mac, address=own))
    assert imds0_received(first.namespace) == before
    # The bridge learns the first VM's MAC on its own port again.
    assert first.guest.http("GET", CLOUD_ADDRESS, 80, "/")[0] == 200


LOOP = r"""
cat > /tmp/loop.sh <<'EOF'
n=0
while [ ! -e /tmp/loop.stop ]; do
    n=$((n + 1))
    if [ "$(HTTP_TIMEOUT=10 http GET {address} 80 / | head -n 1)" = 200 ]; then
        echo "ok $n"
    else
        echo "fail $n"
    fi
done
echo done
EOF
rm -f /tmp/loop.stop /tmp/loop.log
sh /tmp/loop.sh > /tmp/loop.log 2>&1 &
"""


def loop_counts(vm: Vm) -> tuple[int, int]:
    """(requests answered, requests failed) so far by the guest's loop."""
    log = run(vm, "cat /tmp/loop.log")
    return len(re.findall(r"^ok ", log, re.MULTILINE)), len(re.findall(r"^fail ", log, re.M))


def test_the_vms_other_traffic_flows_while_its_namespace_is_deleted_and_made_again(
    site: Site, first: Vm
) -> None:
    """The guest loops on the cloud server while ``rc-<id>`` is deleted (``ip netns del``, then
    the agent's exit frees it) and made again by the restarted agent, which steers into it: no
    request fails, and the metadata service answers again."""
    cloud, namespace = site.cloud, first.namespace
    run(first, LOOP.replace("{address}", CLOUD_ADDRESS))
    try:
        wait_until(lambda: loop_counts(first)[0] >= 3, 30, "the guest's loop to run")
        ip("netns", "delete", namespace)
        cloud.agent.stop()  # its sockets held the namespace: now it is gone, with the veth
        assert namespace not in namespaces()
        # The kernel dismantles a namespace freed by its last holder a moment later.
        wait_until(lambda: not link_exists(steer.host_end(namespace)), 10, "the veth to go")
        gone = loop_counts(first)[0]
        assert token_of(first, timeout=1) == ""
        wait_until(lambda: loop_counts(first)[0] >= gone + 3, 30, "the loop while it is gone")
        cloud.agent.start()
        info = wait_until(lambda: info_of(first), 20, "iam/info in the new namespace")
        assert info["InstanceProfileArn"] == first.profile_arn
        back = loop_counts(first)[0]
        wait_until(lambda: loop_counts(first)[0] >= back + 3, 30, "the loop once it is back")
    finally:
        if cloud.agent.process is None:  # failed while it was stopped: the next test needs it
            cloud.agent.start()
        run(first, "touch /tmp/loop.stop")
        wait_until(lambda: "done" in run(first, "tail -n 1 /tmp/loop.log"), 30, "the loop's end")
    answered, failed = loop_counts(first)
    assert failed == 0 and answered >= gone + 6
    assert namespace in namespaces()
    assert steer.tables().count(namespace) == 1
    assert ip("-n", namespace, "-o", "link").stdout.count("imds0") == 1
    assert len(site.server.requests) >= answered


def test_stopping_the_vms_as_libvirt_does_and_terminating_them_leaves_nothing(
    site: Site, first: Vm, second: Vm
) -> None:
    vms = (first, second)
    for vm in vms:
        site.stop(vm)
        for operation in ("stopped", "release"):
            assert vm.hooks[operation].returncode == 0, vm.hooks[operation].stderr
        assert f"unplug {vm.instance_id} {vm.nic.tap}: unplugged" in vm.hooks["stopped"].stderr
        assert vm.namespace not in steer.tables()
        assert not link_exists(steer.host_end(vm.namespace))
        assert not link_exists(vm.nic.tap)
    site.cloud.ec2.terminate_instances(InstanceIds=[vm.instance_id for vm in vms])
    wanted = {vm.namespace for vm in vms}
    wait_until(lambda: not wanted & namespaces(), 15, "the instances' namespaces to go")
    assert not wanted & set(steer.tables())
    leftovers = ip("-o", "link").stdout
    for vm in vms:
        assert steer.host_end(vm.namespace) not in leftovers
        assert vm.nic.tap not in leftovers
    assert not any(guest.running for guest in network.MADE.guests)
