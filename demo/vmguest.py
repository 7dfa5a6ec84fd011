"""A real VM for the tests, the demo and the benchmarks: the guest of demo/vmimage.py (Debian's
kernel and busybox) booted by QEMU with TCG on tap devices that the caller made, as libvirt would,
and driven over its serial console::

    bridge = add_bridge()
    tap = add_tap(bridge=bridge)
    with VmGuest(guest_image(), [Nic(tap, address="169.254.77.2/24")]) as vm:
        status, output = vm.run("ip -o addr show eth0")
        status, token = vm.imds_token()

Needs root (taps, bridges, the image cache) and ``qemu-system-x86_64`` (``make install``).
``python -m demo.vmguest fetch`` fetches and builds the guest; ``boot`` boots it once.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import io
import ipaddress
import math
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from demo.vmimage import GuestImage, GuestImageError, guest_image

__all__ = [
    "QEMU",
    "GuestImage",
    "Nic",
    "VmError",
    "VmGuest",
    "add_bridge",
    "add_tap",
    "delete_link",
    "guest_image",
    "link_exists",
    "qemu_problem",
    "random_mac",
]

QEMU = "qemu-system-x86_64"
READY = b"@@rc-ready"
FAILED = re.compile(rb"@@rc-fail ([^\r\n]*)\r?\n")
#: How long a boot may take before it is called failed (about 4 s here; CI machines are slower).
BOOT_TIMEOUT = 60.0
#: A command's answer may come this long after its own timeout (TCG is slow).
ANSWER_MARGIN = 15.0
METADATA_ADDRESS = "169.254.169.254"


class VmError(Exception):
    """The VM could not be booted or driven; the message holds the end of its console."""


# -- taps and bridges ----------------------------------------------------------------------------

BRIDGE_PREFIX = "rcbr-"
TAP_PREFIX = "rctap-"


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise VmError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def add_bridge(name: str | None = None) -> str:
    """A bridge (the cloud's, as libvirt's ``virbr0`` or Nova's ``brq…``), up; its name."""
    name = name or f"{BRIDGE_PREFIX}{uuid.uuid4().hex[:8]}"
    _ip("link", "add", name, "type", "bridge")
    try:
        _ip("link", "set", name, "up")
    except BaseException:
        delete_link(name)
        raise
    return name


def add_tap(name: str | None = None, bridge: str | None = None) -> str:
    """A tap device for QEMU to open (as libvirt makes one), up, on `bridge` if given; its name."""
    name = name or f"{TAP_PREFIX}{uuid.uuid4().hex[:8]}"
    _ip("tuntap", "add", "dev", name, "mode", "tap")
    try:
        if bridge is not None:
            _ip("link", "set", name, "master", bridge)
        _ip("link", "set", name, "up")
    except BaseException:
        delete_link(name)
        raise
    return name


def delete_link(name: str) -> None:
    """Remove link `name` (a tap, a bridge, a veth) if it exists."""
    if link_exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30, check=False)


# -- the VM --------------------------------------------------------------------------------------


def random_mac() -> str:
    """A MAC address in QEMU's range (52:54:00, as libvirt gives), random in the last three."""
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(3))


@dataclass(frozen=True)
class Nic:
    """A virtio-net NIC on tap `tap`; `address` (``A.B.C.D/PREFIX``) is set on it by /init."""

    tap: str
    mac: str = field(default_factory=random_mac)
    address: str | None = None

    def __post_init__(self) -> None:
        # Each goes into QEMU's comma-separated options or the kernel's space-separated line.
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", self.tap):
            raise ValueError(f"not a tap name: {self.tap!r}")
        if not re.fullmatch(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", self.mac):
            raise ValueError(f"not a MAC address (lower-case aa:bb:cc:dd:ee:ff): {self.mac!r}")
        if int(self.mac[:2], 16) & 1:
            raise ValueError(f"a multicast MAC address: {self.mac!r}")
        if self.address is not None:
            _check_interface(self.address)

    @property
    def ip(self) -> str | None:
        return self.address.split("/")[0] if self.address else None


def _check_interface(text: str) -> None:
    """`text` is A.B.C.D/N, or ValueError says it is not."""
    try:
        if "/" not in text:
            raise ValueError(text)
        ipaddress.IPv4Interface(text)
    except ValueError:
        raise ValueError(f"not an IPv4 address with its prefix (A.B.C.D/N): {text!r}") from None


def qemu_problem() -> str | None:
    """Why this machine cannot run a QEMU guest at all, or None if it can: no tap devices
    (``/dev/net/tun``), or a TCG that cannot start (no executable memory for its translator).
    A missing QEMU is not such a reason (``make install`` installs it): it raises."""
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found: `make install` installs it (Debian's qemu-system-x86)")
    if not Path("/dev/net/tun").exists():
        return "this machine has no /dev/net/tun: it cannot make tap devices"
    # No machine, no firmware: only whether the accelerator starts (quit at once on the monitor).
    probe = subprocess.run(
        [QEMU, "-accel", "tcg", "-M", "none", "-nodefaults", "-display", "none",
         "-monitor", "stdio"],
        input="quit\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"{QEMU} cannot start TCG here ({probe.returncode}): {probe.stderr.strip()}"
    return None


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In QEMU's process before exec: killed if the process that started it dies, so that a
    test run killed outright leaves no VM running."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class VmGuest:
    """One QEMU guest booted from `image` with `nics` (each on its tap, which must exist), driven
    over its serial console. A context manager: QEMU is killed and reaped on exit, whatever
    happened. `gateway`: the guest's default route. `memory`: MiB (96 is the least that boots).
    `kernel_arguments`: more of the kernel's command line (``loglevel=7`` to see the boot).

    QEMU is killed if the thread that started it ends: start it from a thread that outlives it.
    """

    def __init__(
        self,
        image: GuestImage,
        nics: Sequence[Nic] = (),
        gateway: str | None = None,
        memory: int = 128,
        kernel_arguments: Sequence[str] = (),
    ) -> None:
        if gateway is not None:
            try:
                ipaddress.IPv4Address(gateway)
            except ValueError:
                raise ValueError(f"not an IPv4 address: gateway {gateway!r}") from None
        for argument in kernel_arguments:
            if not argument or any(character.isspace() for character in argument):
                raise ValueError(f"not one kernel argument: {argument!r}")
        self.image = image
        self.nics = tuple(nics)
        self.gateway = gateway
        self.memory = memory
        self.kernel_arguments = tuple(kernel_arguments)
        self.process: subprocess.Popen[bytes] | None = None
        #: Seconds from starting QEMU to the guest's shell being ready.
        self.boot_seconds: float | None = None
        self._output = bytearray()
        self._stderr = bytearray()
        self._changed = threading.Condition()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._commands = threading.Lock()

    # -- the console

    @property
    def console(self) -> str:
        """Everything the guest wrote on its console so far."""
        with self._changed:
            return self._output.decode(errors="replace")

    def _console_tail(self, characters: int = 4000) -> str:
        with self._changed:
            console = self._output.decode(errors="replace")[-characters:]
            stderr = self._stderr.decode(errors="replace").strip()
        return f"--- console (last {characters} characters) ---\n{console}" + (
            f"\n--- {QEMU} stderr ---\n{stderr}" if stderr else ""
        )

    def _drain(self, stream: io.BufferedReader, into: bytearray, console: bool) -> None:
        while chunk := stream.read1(65536):
            with self._changed:
                into.extend(chunk)
                self._changed.notify_all()
        if console:
            with self._changed:
                self._closed = True
                self._changed.notify_all()

    def _wait_for(
        self, pattern: re.Pattern[bytes], start: int, timeout: float
    ) -> re.Match[bytes] | None:
        """The first match of `pattern` in the console from byte `start` on; None if the console
        closed (QEMU exited) or `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = pattern.search(self._output, start)
                if match is not None:
                    return match
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._changed.wait(remaining)

    # -- lifecycle

    def command_line(self) -> list[str]:
        append = ["console=ttyS0", "panic=-1", "loglevel=4"]
        append += [f"rolecall.nic={nic.mac}" + (f",{nic.address}" if nic.address else "")
                   for nic in self.nics]  # fmt: skip
        if self.gateway:
            append.append(f"rolecall.gateway={self.gateway}")
        append += self.kernel_arguments
        argv = [
            QEMU, "-accel", "tcg", "-M", "q35", "-cpu", "max", "-m", str(self.memory),
            "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
            "-serial", "stdio",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", " ".join(append),
        ]  # fmt: skip
        for index, nic in enumerate(self.nics):
            argv += [
                "-netdev", f"tap,id=n{index},ifname={nic.tap},script=no,downscript=no",
                # romfile=: no iPXE option ROM (the kernel is booted directly).
                "-device", f"virtio-net-pci,netdev=n{index},mac={nic.mac},romfile=",
            ]  # fmt: skip
        return argv

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Start QEMU and wait for the guest's shell; :class:`VmError` with the console's end if
        it fails, exits or takes longer than `timeout` (QEMU is then killed)."""
        assert self.process is None, "this guest was booted already"
        for nic in self.nics:
            if not link_exists(nic.tap):
                raise VmError(f"no tap {nic.tap}: make it first (add_tap)")
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.command_line(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,  # QEMU must not outlive its test run
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        for stream, into, console in (
            (self.process.stdout, self._output, True),
            (self.process.stderr, self._stderr, False),
        ):
            thread = threading.Thread(
                target=self._drain,
                args=(stream, into, console),
                daemon=True,
                name=f"vm {self.process.pid}",
            )
            thread.start()
            self._threads.append(thread)
        try:
            ready = self._wait_for(re.compile(READY + rb"|" + FAILED.pattern), 0, timeout)
            if ready is None:
                exited = self.process.poll()
                reason = (
                    f"{QEMU} exited with {exited}"
                    if exited is not None
                    else f"no shell after {timeout:.0f} s"
                )
                raise VmError(f"the guest did not boot: {reason}\n{self._console_tail()}")
            if ready.group(0) != READY:
                raise VmError(
                    f"the guest's /init failed: {ready.group(1).decode(errors='replace')}\n"
                    + self._console_tail()
                )
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started

    def close(self) -> None:
        """Kill QEMU (SIGTERM, then SIGKILL), reap it and stop reading its console."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> VmGuest:
        self.boot()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not booted"
        return self.process.pid

    def rss_kib(self) -> int:
        """QEMU's resident memory now, KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="utf-8")
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None, status
        return int(match.group(1))

    # -- commands

    def run(self, command: str, timeout: float = 10) -> tuple[int, str]:
        """Run shell `command` in the guest (``sh``, stdin empty, stderr with stdout) under
        ``timeout``: (exit status, output). A command that runs out of time exits 143 (its output
        then ends with the shell's "Terminated")."""
        process = self.process
        if process is None or process.stdin is None or process.poll() is not None:
            raise VmError("the guest is not running")
        seconds = max(1, math.ceil(timeout))
        with self._commands:
            tag = secrets.token_hex(8)
            with self._changed:
                start = len(self._output)
            encoded = base64.b64encode(command.encode()).decode()
            try:
                process.stdin.write(f"{tag} {seconds} {encoded}\n".encode())
                process.stdin.flush()
            except OSError as error:
                raise VmError(f"could not write to the guest's console: {error}") from None
            end = self._wait_for(
                re.compile(rb"@@rc-begin " + tag.encode() + rb"\n(.*?)\n@@rc-end "
                           + tag.encode() + rb" (\d+)\n", re.DOTALL),
                start,
                seconds + ANSWER_MARGIN,
            )  # fmt: skip
        if end is None:
            raise VmError(f"no answer from the guest to {command!r}\n{self._console_tail()}")
        return int(end.group(2)), end.group(1).decode(errors="replace")

    def http(
        self, method: str, address: str, port: int, path: str, headers: Sequence[str] = ()
    ) -> tuple[int, str]:
        """One HTTP request from the guest (``/bin/http``): (status, body); status 0 with nc's
        words as the body when no answer came."""
        quoted = " ".join(_quote(word) for word in (method, address, str(port), path, *headers))
        _, output = self.run(f"http {quoted}")
        status, _, body = output.partition("\n")
        try:
            return int(status), body
        except ValueError:
            raise VmError(f"/bin/http said {output!r}") from None

    def imds_token(self, ttl: int = 21600) -> tuple[int, str]:
        """PUT /latest/api/token on 169.254.169.254 from the guest: (status, token). The guest
        reaches that address on-link (a NIC in 169.254.0.0/16) or through its gateway."""
        return self.http(
            "PUT", METADATA_ADDRESS, 80, "/latest/api/token",
            [f"X-aws-ec2-metadata-token-ttl-seconds: {ttl}"],
        )  # fmt: skip

    def imds_get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """GET `path` of 169.254.169.254 from the guest, with `token` if given: (status, body)."""
        headers = [f"X-aws-ec2-metadata-token: {token}"] if token is not None else []
        return self.http("GET", METADATA_ADDRESS, 80, path, headers)


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\"'\"'") + "'"


# -- python -m demo.vmguest ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.vmguest",
        description="Fetch and build the test guest (Debian's kernel and busybox), or boot it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the packages and build the initramfs (cached)")
    boot = commands.add_parser("boot", help="boot the guest on a new tap, run a command, stop")
    boot.add_argument("guest_command", nargs="?", default="uname -a; ip -o link")
    arguments = parser.parse_args(argv)
    try:
        started = time.monotonic()
        image = guest_image(log=lambda message: print(f"    {message}", file=sys.stderr))
        print(f"guest: {image.kernel} {image.initrd} ({time.monotonic() - started:.1f} s)")
        if arguments.command == "boot":
            tap = add_tap()
            try:
                with VmGuest(image, [Nic(tap)]) as vm:
                    print(f"booted in {vm.boot_seconds:.1f} s, QEMU RSS {vm.rss_kib() // 1024} MiB")
                    status, output = vm.run(arguments.guest_command)
                    print(output, end="" if output.endswith("\n") else "\n")
                    return status
            finally:
                delete_link(tap)
    except (GuestImageError, VmError) as error:
        print(f"python -m demo.vmguest: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
