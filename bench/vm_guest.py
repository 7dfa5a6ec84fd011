"""What the real test guest costs (demo/vmimage.py, demo/vmguest.py): fetching and building it,
booting it to its shell, and QEMU's memory.

A benchmark, never a test; it needs root (tap devices, the cache). ``--cold`` first builds the
guest into a temporary cache (``apt-get download`` of both packages, unpacking, the initramfs),
timing each step; then the cached guest is booted ``--runs`` times on a tap of its own (on no
bridge: nothing leaves the machine), each time from QEMU's start to the ``@@rc-ready`` line of
its /init, then one command's round trip and QEMU's resident memory. Everything it makes is
removed when it ends or fails.

    .venv/bin/python bench/vm_guest.py [--runs 5] [--cold] [--memory 128]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.vmguest import Nic, VmGuest, add_tap, delete_link
from demo.vmimage import guest_image


def cold_build() -> None:
    started = time.monotonic()
    steps = [(started, "asking apt which versions (apt-cache show)")]
    with tempfile.TemporaryDirectory(prefix="rolecall-vm-bench-") as cache:
        guest_image(Path(cache), log=lambda step: steps.append((time.monotonic(), step)))
        steps.append((time.monotonic(), "done"))
    print("building the guest into an empty cache (apt's lists as they are):")
    for (at, step), (following, _) in itertools.pairwise(steps):
        print(f"  {step:<70} {following - at:6.2f} s")
    print(f"  {'total':<70} {steps[-1][0] - started:6.2f} s")
    cached = time.monotonic()
    guest_image()
    print(f"  {'the cached guest (versions checked, nothing built)':<70} "
          f"{time.monotonic() - cached:6.2f} s")  # fmt: skip


def boots(runs: int, memory: int) -> None:
    image = guest_image()
    print(f"guest: {', '.join(f'{k} {v}' for k, v in image.packages.items())}; "
          f"kernel booted as {image.kernel_kind}")  # fmt: skip
    tap = add_tap()
    boot, command, rss = [], [], []
    try:
        for _ in range(runs):
            with VmGuest(image, [Nic(tap, address="169.254.77.2/24")], memory=memory) as vm:
                assert vm.boot_seconds is not None
                boot.append(vm.boot_seconds)
                started = time.monotonic()
                vm.run("true")
                command.append(time.monotonic() - started)
                rss.append(vm.rss_kib() / 1024)
    finally:
        delete_link(tap)
    print(f"{runs} boots, -m {memory}, TCG, one vCPU:")
    for name, values, unit in (
        ("QEMU start to the guest's shell", boot, "s"),
        ("one command's round trip (true)", command, "s"),
        ("QEMU's RSS after boot", rss, "MiB"),
    ):
        print(f"  {name:<36} median {statistics.median(values):7.2f} {unit:<3} "
              f"min {min(values):7.2f}  max {max(values):7.2f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="boots (default 5)")
    parser.add_argument("--memory", type=int, default=128, help="guest MiB (default 128)")
    parser.add_argument("--cold", action="store_true", help="also time a build from nothing")
    arguments = parser.parse_args()
    if arguments.runs < 1:
        parser.error("--runs must be at least 1")
    if arguments.cold:
        cold_build()
    boots(arguments.runs, arguments.memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
