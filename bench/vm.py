"""A real VM and its metadata service (issue 13): the time from QEMU's start to the guest's first
credentials, what the libvirt hook and the steering add, and the credential GET from inside the
real guest next to the same loop in a namespace guest.

Run as root: ``.venv/bin/python bench/vm.py [--runs 3] [--requests 200] [--steer-instances 500]``
(``make bench-vm``). It starts a controller and an agent (tests/netns/harness.py), a bridge, a
"cloud" namespace (the guests' gateway) and wires each VM as libvirt would (tests/vm/libvirt.py:
its tap on the bridge first, then QEMU, and the shipped hook at ``started``). Tables only, no
asserts; everything it makes is removed at the end, also on failure and Ctrl-C. Last, it runs
bench/steer.py (the node's cost per wired instance) and prints its table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import plug, steer  # noqa: E402
from demo.vmguest import Nic, VmGuest, add_bridge, add_tap, delete_link, random_mac  # noqa: E402
from demo.vmimage import GuestImage, guest_image  # noqa: E402
from tests.netns.harness import Cloud, cloud_in, ip, unique  # noqa: E402
from tests.vm.libvirt import Hook, domain_xml  # noqa: E402
from tests.vm.network import CloudServer  # noqa: E402

SUBNET = "169.254.77"
GATEWAY = f"{SUBNET}.1"
CREDENTIALS = "/latest/meta-data/iam/security-credentials/"


class Disturbed(Exception):
    """The instance's steering vanished under the measurement: another agent on this host (a
    test run beside this one) removed it. The measurement is made again."""


def check_steered(instance_id: str, what: str) -> None:
    if f"rc-{instance_id}" not in steer.tables():
        raise Disturbed(f"{what}: the steering of {instance_id} was removed by another process")


@dataclass
class Boot:
    boot: float  # QEMU start to the guest's shell
    first_credentials: float  # QEMU start to the first credential GET answered (200)
    hook_started: float  # QEMU start to the hook's start
    hook_done: float  # the hook's run (process start to exit), the plug included
    first_get: float  # the guest's token PUT + credential GET, once booted


def median(values: Sequence[float]) -> str:
    low, high = 1000 * min(values), 1000 * max(values)
    return f"{1000 * statistics.median(values):.1f} ms (min {low:.1f}, max {high:.1f})"


def guest_get_loop(count: int, role: str, token: str) -> str:
    """A shell loop of `count` sequential credential GETs with busybox nc (HTTP/1.1, one
    connection each), counting the 200 answers in /tmp/ok."""
    request = (
        f"GET {CREDENTIALS}{role} HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n"
        f"X-aws-ec2-metadata-token: {token}\\r\\nConnection: close\\r\\n\\r\\n"
    )
    return (
        f": > /tmp/ok; i=0; while [ $i -lt {count} ]; do i=$((i + 1));"
        f" printf '{request}' | nc -w 3 169.254.169.254 80 | head -n 1 | grep -c ' 200 '"
        " >> /tmp/ok;"
        " done; grep -c 1 /tmp/ok"
    )


class Bench:
    def __init__(self, cloud: Cloud, image: GuestImage, workdir: Path, stack: ExitStack) -> None:
        self.cloud = cloud
        self.image = image
        self.stack = stack
        self.bridge = add_bridge()
        stack.callback(delete_link, self.bridge)
        server = CloudServer(self.bridge, f"{GATEWAY}/24")
        stack.callback(server.close)
        self.hook = Hook(cloud.agent.config, workdir)
        self.role, _ = cloud.profile()

    def instance(self) -> str:
        instance_id = self.cloud.launch(self.role)
        self.cloud.wait_served(instance_id)
        return instance_id

    def tap(self) -> str:
        tap = add_tap(bridge=self.bridge)
        self.stack.callback(delete_link, tap)
        return tap

    def boot(self, address: str) -> tuple[Boot, VmGuest, str, str, str]:
        """One VM wired as libvirt wires it; its timings, the guest, its instance, name, XML."""
        instance_id = self.instance()
        nic = Nic(self.tap(), mac=random_mac(), address=f"{address}/24")
        name = f"vm-{instance_id}"
        xml = domain_xml(name, instance_id, nic, self.bridge)
        for operation in ("prepare", "start"):
            self.hook.run(name, xml, operation, "begin")
        vm = VmGuest(self.image, [nic], gateway=GATEWAY)
        self.stack.callback(vm.close)
        times: dict[str, float] = {}

        def started() -> None:
            while vm.process is None:
                time.sleep(0.001)
            times["hook start"] = time.monotonic()
            result = self.hook.run(name, xml, "started", "begin")
            times["hook end"] = time.monotonic()
            if "steered" not in result.stderr:
                print(f"bench/vm.py: the hook said {result.stderr!r}", file=sys.stderr)

        thread = threading.Thread(target=started)
        start = time.monotonic()
        thread.start()
        vm.boot()
        thread.join()
        assert vm.boot_seconds is not None
        ready = time.monotonic()
        _, output = vm.run(
            f't=$(imds token | tail -n +2) && imds get {CREDENTIALS}{self.role} "$t" | head -n 1'
        )
        answered = time.monotonic()
        check_steered(instance_id, "the boot")
        if output.strip() != "200":
            print(f"bench/vm.py: the first credential GET said {output!r}", file=sys.stderr)
        boot = Boot(
            boot=vm.boot_seconds,
            first_credentials=answered - start,
            hook_started=times["hook start"] - start,
            hook_done=times["hook end"] - times["hook start"],
            first_get=answered - ready,
        )
        return boot, vm, instance_id, name, xml


def steered_frame(
    bench: Bench, vm: VmGuest, instance_id: str, plug_it: Callable[[], object]
) -> tuple[float, float]:
    """The guest pings 169.254.169.254 every 2 ms (unplugged: nothing reaches the namespace);
    `plug_it` wires it: (seconds from the plug's start to the first frame steered into the
    namespace, seconds the plug call took)."""
    namespace = f"rc-{instance_id}"
    counter = Path("/sys/class/net", steer.host_end(namespace), "statistics", "tx_packets")
    vm.run("ping -q -i 0.002 -w 20 169.254.169.254 > /dev/null 2>&1 &")
    time.sleep(0.3)
    started = time.monotonic()
    done: list[float] = []
    thread = threading.Thread(target=lambda: (plug_it(), done.append(time.monotonic())))
    thread.start()
    deadline = started + 10
    first = None
    while time.monotonic() < deadline:
        try:
            if int(counter.read_text()) > 0:
                first = time.monotonic()
                break
        except (FileNotFoundError, ValueError):
            pass
    thread.join()
    vm.run("killall ping; true")
    check_steered(instance_id, "the steering time")
    if first is None:
        raise SystemExit("bench/vm.py: no frame was steered within 10 s")
    return first - started, done[0] - started


def hook_process(hook: Hook, runs: int) -> tuple[list[float], list[float]]:
    """The hook's own process, doing nothing (``prepare``: exits after its imports), and the
    Python interpreter alone: seconds each, `runs` times."""
    nothing, bare = [], []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run(hook.argv("vm", "prepare", "begin"), input="", env=hook.env, check=True)
        nothing.append(time.monotonic() - began)
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.monotonic() - began)
    return nothing, bare


def namespace_loop(bench: Bench, count: int, address: str) -> tuple[float, int]:
    """The same nc loop from a namespace guest (a stand-in VM on the bridge, its veth plugged
    like a tap) with the guest's own busybox: (seconds, 200 answers)."""
    instance_id = bench.instance()
    name = unique("rcg-")
    tap = unique("rct")
    bench.stack.callback(subprocess.run, ["ip", "netns", "delete", name], capture_output=True)
    ip("netns", "add", name)
    ip("link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", name)
    bench.stack.callback(delete_link, tap)
    ip("link", "set", tap, "master", bench.bridge, "up")
    for command in (
        ("link", "set", "lo", "up"),
        ("addr", "add", f"{address}/24", "dev", "eth0"),
        ("link", "set", "eth0", "up"),
        ("route", "add", "default", "via", GATEWAY),
    ):
        ip("-n", name, *command)
    answer = plug.ask(bench.cloud.agent.plug_socket, "plug", instance_id, tap)
    assert answer.get("state") == "steered", answer
    # The cached busybox is not executable (it is only packed into the initramfs): a copy.
    copy = Path(tempfile.mkdtemp(prefix="rolecall-bench-vm-"))
    bench.stack.callback(shutil.rmtree, copy, True)
    busybox = str(copy / "busybox")
    shutil.copyfile(bench.image.kernel.parent / "busybox", busybox)
    os.chmod(busybox, 0o700)
    shell = ["ip", "netns", "exec", name, busybox, "sh", "-c"]
    env = {"PATH": "/usr/bin:/bin", "BB": busybox}
    put_request = (
        "printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\n"
        "X-aws-ec2-metadata-token-ttl-seconds: 300\\r\\nContent-Length: 0\\r\\n"
        "Connection: close\\r\\n\\r\\n' | $BB nc 169.254.169.254 80"
    )
    got = subprocess.run([*shell, put_request], capture_output=True, text=True, env=env)
    if got.returncode != 0:
        raise SystemExit(f"bench/vm.py: no token in the namespace guest: {got.stderr.strip()}")
    status = got.stdout.split("\n", 1)[0]  # text=True: CR LF read as LF
    if " 200 " not in status:
        raise SystemExit(f"bench/vm.py: the namespace guest's token PUT: {got.stdout!r}")
    token = got.stdout.rsplit("\n\n", 1)[-1].strip()
    loop = (
        guest_get_loop(count, bench.role, token)
        .replace("nc ", "$BB nc ")
        .replace("head ", "$BB head ")
        .replace("grep ", "$BB grep ")
    )
    with tempfile.TemporaryDirectory() as work:
        loop = loop.replace("/tmp/ok", f"{work}/ok")  # noqa: S108 - the guest's own /tmp
        began = time.monotonic()
        result = subprocess.run([*shell, loop], capture_output=True, text=True, env=env)
        seconds = time.monotonic() - began
    check_steered(instance_id, "the namespace guest's GET loop")
    return seconds, int(result.stdout.strip() or 0)


def rewire(
    bench: Bench, vm: VmGuest, instance_id: str, name: str, xml: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """:func:`steered_frame` with the hook's ``started``, then with a plug request alone."""
    bench.hook.run(name, xml, "stopped", "end")
    hooked = steered_frame(
        bench, vm, instance_id, lambda: bench.hook.run(name, xml, "started", "begin")
    )
    bench.hook.run(name, xml, "stopped", "end")
    socket_path, tap = bench.cloud.agent.plug_socket, vm.nics[0].tap
    asked = steered_frame(
        bench, vm, instance_id, lambda: plug.ask(socket_path, "plug", instance_id, tap)
    )
    return hooked, asked


def one_run(
    bench: Bench, address: str, requests: int
) -> tuple[Boot, tuple[float, float], tuple[float, float], tuple[float, int] | None]:
    """One VM: its boot, its steering times, and (`requests` > 0) its credential GET loop."""
    boot, vm, instance_id, name, xml = bench.boot(address)
    try:
        # Unplugged, then wired again while the guest sends: by the hook, then by a plug
        # request alone (no process).
        hooked, asked = rewire(bench, vm, instance_id, name, xml)
        rate = None
        if requests:
            _, output = vm.run("imds token 300 | tail -n +2")
            began = time.monotonic()
            _, answer = vm.run(guest_get_loop(requests, bench.role, output.strip()), timeout=300)
            seconds = time.monotonic() - began
            check_steered(instance_id, "the guest's GET loop")
            last = answer.strip().splitlines()[-1:] or ["0"]
            rate = (seconds, int(last[0]) if last[0].isdigit() else 0)
        return boot, hooked, asked, rate
    finally:
        vm.close()
        bench.hook.run(name, xml, "stopped", "end")
        bench.hook.run(name, xml, "release", "end")


@contextmanager
def setting_up(workdir: Path) -> Iterator[tuple[Bench, ExitStack]]:
    with ExitStack() as stack:
        cloud = stack.enter_context(cloud_in(workdir))
        yield Bench(cloud, guest_image(), workdir, stack), stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="VM boots (default 3)")
    parser.add_argument(
        "--requests", type=int, default=200, help="credential GETs per loop (default 200)"
    )
    parser.add_argument(
        "--steer-instances",
        type=int,
        default=500,
        help="bench/steer.py --instances (default 500; 0: do not run it)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/vm.py: run as root (taps, bridges, namespaces, nftables)", file=sys.stderr)
        return 2
    if args.runs < 1 or args.requests < 1:
        parser.error("--runs and --requests must be at least 1")
    with tempfile.TemporaryDirectory(prefix="rolecall-bench-vm-") as work:
        with setting_up(Path(work)) as (bench, _):
            boots: list[Boot] = []
            wiring: list[tuple[float, float]] = []
            direct: list[tuple[float, float]] = []
            guest_rate = (1.0, 0)
            disturbed = 0
            for run in range(args.runs):
                for _attempt in range(5):
                    try:
                        boot, hooked, asked, rate = one_run(
                            bench, f"{SUBNET}.{11 + run}", args.requests if run == 0 else 0
                        )
                    except Disturbed as error:
                        disturbed += 1
                        print(f"bench/vm.py: {error}; again", file=sys.stderr)
                        continue
                    boots.append(boot)
                    wiring.append(hooked)
                    direct.append(asked)
                    if rate is not None:
                        guest_rate = rate
                    break
                else:
                    raise SystemExit("bench/vm.py: disturbed 5 times in a row; giving up")
            nothing, bare = hook_process(bench.hook, 10)
            for attempt in range(5):
                try:
                    ns_seconds, ns_ok = namespace_loop(
                        bench, args.requests, f"{SUBNET}.{99 - attempt}"
                    )
                    break
                except Disturbed as error:
                    disturbed += 1
                    print(f"bench/vm.py: {error}; again", file=sys.stderr)
            else:
                raise SystemExit("bench/vm.py: disturbed 5 times in a row; giving up")
    print(
        f"A real VM wired by the libvirt hook (TCG, {args.runs} boots; Linux {os.uname().release})"
    )
    print()
    print("| figure | median |")
    print("|---|---|")
    rows = [
        ("QEMU start to the guest's shell (boot)", [b.boot for b in boots]),
        ("QEMU start to the first credential GET answered", [b.first_credentials for b in boots]),
        ("  of which the guest's token PUT + GET once booted", [b.first_get for b in boots]),
        ("QEMU start to the hook's start (libvirt: `started`)", [b.hook_started for b in boots]),
        ("the hook's whole run at boot (process, plug, exit)", [b.hook_done for b in boots]),
        ("hook start to the first frame steered (goal < 50 ms)", [w[0] for w in wiring]),
        ("  the hook's run meanwhile", [w[1] for w in wiring]),
        ("plug request (socket, no process) to the first frame steered", [d[0] for d in direct]),
        ("  the plug request's answer", [d[1] for d in direct]),
        ("the hook's process doing nothing (`prepare`: imports, exit)", nothing),
        ("the Python interpreter alone (`python -c pass`)", bare),
    ]
    for label, values in rows:
        print(f"| {label} | {median(values)} |")
    if disturbed:
        print()
        print(f"({disturbed} run(s) made again: another agent on this host removed the steering)")
    print()
    print(f"Credential GETs, sequential, one busybox nc connection each ({args.requests}):")
    print()
    print("| guest | requests/s | answered 200 |")
    print("|---|---|---|")
    for label, (seconds, ok) in (
        ("real VM (TCG, one vCPU)", guest_rate),
        ("namespace guest (same busybox, on the host's CPU)", (ns_seconds, ns_ok)),
    ):
        print(f"| {label} | {args.requests / seconds:.1f} | {ok}/{args.requests} |")
    print()
    if args.steer_instances:
        print(f"bench/steer.py --instances {args.steer_instances}:")
        print()
        sys.stdout.flush()
        return subprocess.run(
            [sys.executable, str(ROOT / "bench" / "steer.py"), "--instances",
             str(args.steer_instances)],
            check=False,
        ).returncode  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
