"""The pure parts of the test guest (demo/vmimage.py, demo/vmguest.py): apt's answer, the
modules' load order, the kernel QEMU boots, the initramfs archive, QEMU's command line, and the
guest's shell scripts. Booting it is tests/vm's."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from demo import vmimage
from demo.vmguest import Nic, VmGuest
from demo.vmimage import (
    Cpio,
    GuestImage,
    GuestImageError,
    Package,
    bootable_kernel,
    initramfs,
    load_order,
    packages_from,
)

SHOWN = """Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel and modules for use on PCs

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Depends: libc6
"""


def test_apts_answer_names_the_versioned_kernel_package_as_the_metapackage_pins_it() -> None:
    assert packages_from(SHOWN) == (
        Package("linux-image-6.1.0-57-amd64", "6.1.192-3"),
        Package("busybox-static", "1:1.35.0-4+deb12u1+b1"),
    )


def test_an_answer_without_busybox_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        packages_from(SHOWN.split("\n\n")[0])


def module(depends: str) -> bytes:
    """A stand-in .ko: only its modinfo strings matter here."""
    return (
        b"\x7fELF\x00junk\x00license=GPL\x00depends=" + depends.encode() + b"\x00vermagic=6.1\x00"
    )


def test_modules_load_after_what_they_depend_on() -> None:
    modules = {
        "virtio_net": module("virtio_ring,virtio,net_failover"),
        "net_failover": module("failover"),
        "failover": module(""),
        "virtio": module(""),
        "virtio_ring": module(""),
        "virtio_pci": module("virtio_ring,virtio_pci_modern_dev,virtio"),
        "virtio_pci_modern_dev": module(""),
    }
    order = load_order(modules, ["virtio_pci", "virtio_net"])
    assert sorted(order) == sorted(modules)
    for name, body in modules.items():
        for dependency in vmimage._depends(body):
            assert order.index(dependency) < order.index(name)


def test_a_dependency_missing_from_the_package_is_named() -> None:
    with pytest.raises(GuestImageError, match="module failover \\(needed by net_failover\\)"):
        load_order({"net_failover": module("failover")}, ["net_failover"])


def test_modules_that_depend_on_each_other_are_refused() -> None:
    with pytest.raises(GuestImageError, match="circle"):
        load_order({"a": module("b"), "b": module("a")}, ["a"])


ELF = b"\x7fELF" + bytes(range(256)) * 64
CONFIG = "CONFIG_X=y\nCONFIG_PVH=y\nCONFIG_Y=m\n"


def bzimage(payload: bytes) -> bytes:
    """A stand-in bzImage: a setup header, then the xz-compressed kernel."""
    return b"MZ" + b"\x00" * 510 + b"HdrS" + b"\x00" * 100 + payload + b"\x00" * 16


def test_qemu_boots_the_uncompressed_kernel_when_it_has_a_pvh_entry() -> None:
    compressed = bzimage(lzma.compress(ELF, check=lzma.CHECK_CRC32))
    assert bootable_kernel(compressed, CONFIG) == (ELF, "vmlinux (PVH entry)")


@pytest.mark.parametrize(
    ("payload", "config"),
    [
        (lzma.compress(ELF), "CONFIG_X=y\n# CONFIG_PVH is not set\n"),
        (vmimage.XZ_MAGIC + b"not xz at all", CONFIG),
        (lzma.compress(b"not an ELF file"), CONFIG),
        (gzip.compress(ELF), CONFIG),
    ],
    ids=["no PVH", "broken xz", "not ELF", "gzip"],
)
def test_otherwise_qemu_boots_the_bzimage_as_it_is(payload: bytes, config: str) -> None:
    image = bzimage(payload)
    assert bootable_kernel(image, config) == (image, "bzImage")


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, body, (rdev major, minor)) of each entry of a newc archive, checking the
    layout the kernel expects: magic, 4-byte alignment, a trailer at the end."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    offset = 0
    while True:
        assert data[offset : offset + 6] == b"070701", offset
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, name_size = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_start = offset + 110
        name = data[name_start : name_start + name_size - 1].decode()
        assert data[name_start + name_size - 1] == 0
        body_start = name_start + name_size + (-(110 + name_size) % 4)
        assert body_start % 4 == 0
        body = data[body_start : body_start + size]
        offset = body_start + size + (-size % 4)
        if name == "TRAILER!!!":
            assert offset == len(data)
            return entries
        entries.append((name, mode, body, rdev))


def test_the_archive_is_newc_with_each_kind_of_entry() -> None:
    archive = Cpio()
    archive.directory("bin")
    archive.file("bin/busybox", b"\x7fELF binary", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.character_device("dev/console", 5, 1)
    archive.directory("tmp", 0o1777)
    assert read_newc(archive.finish()) == [
        ("bin", 0o040755, b"", (0, 0)),
        ("bin/busybox", 0o100755, b"\x7fELF binary", (0, 0)),
        ("bin/sh", 0o120777, b"busybox", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("tmp", 0o041777, b"", (0, 0)),
    ]


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    (tmp_path / "busybox").write_bytes(b"busybox binary")
    (tmp_path / "modules").mkdir()
    for name in ("virtio", "virtio_net", "veth"):
        (tmp_path / "modules" / f"{name}.ko").write_bytes(module(""))
    (tmp_path / "boot-order").write_text("virtio\nvirtio_net\n")
    return tmp_path


def test_the_initramfs_holds_init_busybox_the_scripts_and_the_modules(parts: Path) -> None:
    entries = {
        name: (mode, body) for name, mode, body, _ in read_newc(gzip.decompress(initramfs(parts)))
    }
    assert entries["init"] == (0o100755, (vmimage.SCRIPTS / "init").read_bytes())
    for script in ("http", "imds"):
        assert entries[f"bin/{script}"] == (0o100755, (vmimage.SCRIPTS / script).read_bytes())
    assert entries["bin/busybox"] == (0o100755, b"busybox binary")
    assert entries["bin/sh"] == (0o120777, b"busybox")
    assert entries["lib/modules/boot-order"][1] == b"virtio\nvirtio_net\n"
    assert {name for name in entries if name.endswith(".ko")} == {
        "lib/modules/virtio.ko", "lib/modules/virtio_net.ko", "lib/modules/veth.ko"
    }  # fmt: skip
    assert "dev/console" in entries  # the kernel opens it for /init before devtmpfs is mounted


def test_the_same_parts_make_the_same_initramfs(parts: Path) -> None:
    assert initramfs(parts) == initramfs(parts)


def test_qemu_gets_each_nic_on_its_tap_and_the_guest_its_addresses() -> None:
    image = GuestImage(Path("/cache/kernel"), Path("/cache/initrd.gz"), {}, "bzImage")
    first = Nic("rctap-a", "52:54:00:00:00:0a", "169.254.77.2/24")
    second = Nic("rctap-b", "52:54:00:00:00:0b")
    argv = VmGuest(image, [first, second], gateway="169.254.77.1").command_line()
    assert argv[argv.index("-kernel") + 1] == "/cache/kernel"
    assert argv[argv.index("-initrd") + 1] == "/cache/initrd.gz"
    assert argv[argv.index("-accel") + 1] == "tcg"
    append = argv[argv.index("-append") + 1].split()
    assert "console=ttyS0" in append
    assert "rolecall.nic=52:54:00:00:00:0a,169.254.77.2/24" in append
    assert "rolecall.nic=52:54:00:00:00:0b" in append
    assert "rolecall.gateway=169.254.77.1" in append
    assert "tap,id=n0,ifname=rctap-a,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:0b,romfile=" in argv


def test_random_macs_are_qemus_and_differ() -> None:
    macs = {Nic("t").mac for _ in range(20)}
    assert len(macs) == 20
    assert all(mac.startswith("52:54:00:") and len(mac) == 17 for mac in macs)


@pytest.mark.parametrize("script", sorted(vmimage.GUEST_SCRIPTS))
def test_shellcheck_finds_nothing_in_the_guests_scripts(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: `make install` installs it"
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", vmimage.SCRIPTS / script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_concurrent_runs_build_a_cache_entry_once_and_all_get_it(tmp_path: Path) -> None:
    builds: list[Path] = []
    results: list[Path] = []
    start = threading.Barrier(3)

    def build(into: Path) -> None:
        builds.append(into)
        (into / "made").write_text("once")
        time.sleep(0.3)  # the others reach the lock meanwhile

    def run() -> None:
        start.wait()
        results.append(vmimage._cached(tmp_path / "parts-x", build))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(builds) == 1
    assert results == [tmp_path / "parts-x"] * 3
    assert (tmp_path / "parts-x" / "made").read_text() == "once"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".lock", "parts-x"]


def test_a_failed_build_leaves_no_entry_and_no_half_of_one(tmp_path: Path) -> None:
    def build(into: Path) -> None:
        (into / "half").write_text("")
        raise GuestImageError("the download failed")

    with pytest.raises(GuestImageError, match="the download failed"):
        vmimage._cached(tmp_path / "parts-x", build)
    assert [path.name for path in tmp_path.iterdir()] == [".lock"]


@pytest.mark.parametrize(
    ("nic", "error"),
    [
        ({"tap": "tap,script=/x"}, "not a tap name"),
        ({"tap": "t", "mac": "52:54:00:00:00:0G"}, "not a MAC address"),
        ({"tap": "t", "mac": "53:54:00:00:00:01"}, "multicast"),
        ({"tap": "t", "address": "169.254.77.2"}, "with its prefix"),
        ({"tap": "t", "address": "169.254.77.2/24 init=/bin/sh"}, "with its prefix"),
    ],
)
def test_a_nic_that_would_change_qemus_options_or_the_kernels_line_is_refused(
    nic: dict[str, str], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        Nic(**nic)


def test_a_gateway_or_kernel_argument_that_is_not_one_word_is_refused() -> None:
    image = GuestImage(Path("/k"), Path("/i"), {}, "bzImage")
    with pytest.raises(ValueError, match="gateway"):
        VmGuest(image, gateway="169.254.1.1 init=/bin/sh")
    with pytest.raises(ValueError, match="not one kernel argument"):
        VmGuest(image, kernel_arguments=["loglevel=7 init=/bin/sh"])
