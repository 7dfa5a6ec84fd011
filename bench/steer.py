"""The node's cost of wiring VMs to their metadata service (issue 13): plugging and unplugging
many instances through the root process's broker, and the time from a plug to the first
metadata connection from a stand-in VM.

Run as root: ``.venv/bin/python bench/steer.py [--instances 500]``. It makes N namespaces as the
agent does (`agent.netns.prepare`) and N stand-in taps (veth pairs in the host namespace), then
times `Broker` plug requests for all (each: a link dump to check the taps, the veth pair made by
rtnetlink, one nf_tables netlink batch) and unplug requests for all, and prints a table with
the nftables rules (counted with ``nft -j list table``, the only nft run) and the memory each
wired instance costs. Everything it makes is removed at the end, also on failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from agent import netns, privileged, steer
from agent.netns import OwnershipRecord
from agent.privileged import Broker
from common.notify import Notifier

PREFIX = f"rcs{uuid.uuid4().hex[:4]}-"


def ip_batch(commands: list[str]) -> None:
    subprocess.run(
        ["ip", "-batch", "-"], input="\n".join(commands) + "\n", text=True, check=True, timeout=600
    )


def meminfo(key: str) -> int:
    """A /proc/meminfo figure, in KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(key)


def ask(broker: Broker, **message: object) -> dict[str, object]:
    answer, sockets = broker.handle(json.dumps(message).encode(), False)
    for each in sockets:
        each.close()
    if not answer.get("ok"):
        raise SystemExit(f"bench/steer.py: the broker refused {message}: {answer}")
    return answer


@contextmanager
def made(count: int) -> Iterator[tuple[list[str], list[str]]]:
    """`count` namespaces (as the agent makes them) and stand-in taps; removed afterwards."""
    names = [f"{PREFIX}{index:05d}" for index in range(count)]
    taps = [f"rct{PREFIX[3:7]}{index:05d}" for index in range(count)]
    try:
        for name in names:
            netns.prepare(name)
        ip_batch([f"link add {tap} type veth peer name rcu{tap[3:]}" for tap in taps])
        ip_batch([f"link set {tap} up" for tap in taps])
        yield names, taps
    finally:
        for name in steer.tables():
            if name.startswith(PREFIX):
                steer.remove(name)
        subprocess.run(
            ["ip", "-batch", "-", "-force"],
            input="".join(f"link delete {tap}\n" for tap in taps),
            text=True,
            capture_output=True,
            timeout=600,
        )
        for name in names:
            netns.release(netns.Ownership(name, created_namespace=True, added_address=True))


def plug_all(count: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="rolecall-bench-steer-") as work,
        made(count) as (
            names,
            taps,
        ),
    ):
        broker = Broker(80, OwnershipRecord(Path(work) / "namespaces.json"), Notifier(None), netns)
        for name in names:
            ask(broker, op="prepare", netns=name)
        before = meminfo("MemAvailable")
        slab_before = meminfo("Slab")
        started = time.perf_counter()
        for name, tap in zip(names, taps, strict=True):
            assert ask(broker, op="plug", netns=name, tap=tap)["state"] == "steered"
        plugged = time.perf_counter() - started
        used = before - meminfo("MemAvailable")
        slab = meminfo("Slab") - slab_before
        rules = count_rules(names[0])
        tables = sum(1 for name in steer.tables() if name.startswith(PREFIX))
        started = time.perf_counter()
        for name, tap in zip(names, taps, strict=True):
            assert ask(broker, op="unplug", netns=name, tap=tap)["state"] == "unplugged"
        unplugged = time.perf_counter() - started
        left = sum(1 for name in steer.tables() if name.startswith(PREFIX))
    return {
        "plug": plugged,
        "unplug": unplugged,
        "memory": used,
        "slab": slab,
        "rules": rules,
        "tables": tables,
        "left": left,
    }


def count_rules(name: str) -> int:
    listing = json.loads(
        subprocess.run(
            ["nft", "-j", "list", "table", "netdev", steer.table_name(name)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    )  # fmt: skip
    return sum(1 for entry in listing["nftables"] if "rule" in entry)


def first_connection() -> tuple[float, float]:
    """A stand-in VM on a bridge and a served namespace: (seconds the plug request took,
    seconds from the plug request to the VM's first TCP connection to 169.254.169.254:80)."""
    token = uuid.uuid4().hex[:6]
    bridge, tap, vm, name = f"rcb{token}", f"rct{token}", f"rcg-{token}", f"{PREFIX}one"
    with ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        stack.callback(subprocess.run, ["ip", "link", "delete", bridge], capture_output=True)
        stack.callback(subprocess.run, ["ip", "link", "delete", tap], capture_output=True)
        stack.callback(subprocess.run, ["ip", "netns", "delete", vm], capture_output=True)
        ip_batch(
            [
                f"link add {bridge} type bridge",
                f"link set {bridge} up",
                f"netns add {vm}",
                f"link add {tap} type veth peer name eth0 netns {vm}",
                f"link set {tap} master {bridge} up",
            ]
        )
        subprocess.run(
            ["ip", "-n", vm, "-batch", "-"],
            input="link set lo up\naddr add 169.254.77.10/24 dev eth0\nlink set eth0 up\n"
            "route add default dev eth0\n",
            text=True,
            check=True,
            timeout=60,
        )
        broker = Broker(80, OwnershipRecord(Path(work) / "namespaces.json"), Notifier(None), netns)
        stack.callback(netns.release, netns.Ownership(name, True, True))
        stack.callback(steer.remove, name)
        ask(broker, op="prepare", netns=name)
        server = netns.listen(name, 80)
        stack.callback(server.close)
        started = time.perf_counter()
        ask(broker, op="plug", netns=name, tap=tap)
        plugged = time.perf_counter() - started
        deadline = started + 10
        while time.perf_counter() < deadline:
            with netns.inside(vm):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.settimeout(0.05)
            try:
                client.connect(("169.254.169.254", 80))
            except OSError:
                continue
            finally:
                client.close()
            return plugged, time.perf_counter() - started
        raise SystemExit("bench/steer.py: the stand-in VM never reached its namespace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500, help="how many (default 500)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/steer.py: run as root (real namespaces, links, nftables)", file=sys.stderr)
        return 2
    if not 1 <= args.instances <= 5000:
        parser.error("argument --instances: from 1 to 5000")
    privileged.say = lambda level, message: None  # one line per plug: not the figure
    plugged, connected = first_connection()
    figures = plug_all(args.instances)
    count = args.instances
    print(f"Steering {count} stand-in instances (Linux {os.uname().release}, nf_tables netlink)")
    print()
    print("| figure | value |")
    print("|---|---|")
    print(
        f"| plug {count} (broker, prepared namespaces) | {figures['plug']:.2f} s"
        f" ({1000 * figures['plug'] / count:.1f} ms each) |"
    )
    print(
        f"| unplug {count} | {figures['unplug']:.2f} s"
        f" ({1000 * figures['unplug'] / count:.1f} ms each) |"
    )
    print(f"| plug + unplug {count} | {figures['plug'] + figures['unplug']:.2f} s (goal < 10 s) |")
    print(f"| one plug request | {1000 * plugged:.1f} ms |")
    print(
        f"| plug request to the VM's first connection | {1000 * connected:.1f} ms (goal < 50 ms) |"
    )
    print(f"| nftables per instance | 1 table, 2 base chains, {figures['rules']:.0f} rules |")
    print(f"| tables made / left after unplug | {figures['tables']:.0f} / {figures['left']:.0f} |")
    print(
        f"| memory per wired instance (MemAvailable drop) | {figures['memory'] / count:.0f} KiB |"
    )
    print(f"| of which slab | {figures['slab'] / count:.0f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
