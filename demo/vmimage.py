"""The guest that tests, the demo and the benchmarks boot (demo/vmguest.py): Debian's kernel
and busybox in a small initramfs, made from two Debian packages fetched with ``apt-get download``
and unpacked without installing them (no kernel postinst runs on this machine).

- From the package ``linux-image-amd64`` depends on: the kernel (its uncompressed ELF, which QEMU
  enters through its PVH note, see :func:`bootable_kernel`) and the virtio-net modules with what
  they depend on (read from the modules); from ``busybox-static``: ``/bin/busybox``.
- The initramfs: busybox, the modules and the scripts in ``demo/vm-guest/``: ``/init`` sets the
  NICs up from the kernel command line, then runs the commands the host writes on the serial
  console (the protocol is in that script); ``/bin/http`` and ``/bin/imds`` make HTTP requests
  with busybox ``nc`` (Debian 12's busybox ``wget -T`` crashes).

Everything is cached under :data:`CACHE_DIR`: ``parts-KEY`` (what was taken from the packages,
keyed by their versions), ``image-KEY`` (the initramfs, keyed by the parts and the scripts) and
``packages.json`` (apt's answer, kept while apt's lists are unchanged). Each is made under a lock
in a temporary directory and renamed into place once complete: concurrent runs share one build
and never see half of one. ``apt-get update`` runs only when apt's lists lack the packages or name
versions the mirror no longer has.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import pwd
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CACHE_DIR",
    "GuestImage",
    "GuestImageError",
    "bootable_kernel",
    "guest_image",
    "initramfs",
    "load_order",
    "packages_from",
    "resolve_packages",
]

#: Where the guest's parts and images are kept between runs (root's: building needs root).
CACHE_DIR = Path(os.environ.get("ROLECALL_VM_CACHE", "/var/cache/rolecall/vm-guest"))
#: The metapackage naming the current kernel package, pinned to its version.
KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: Loaded by /init, each after the modules it depends on (read from the modules themselves):
#: virtio over PCI and its network device. Debian builds them as modules.
BOOT_MODULES = ("virtio_pci", "virtio_net")
#: Carried but not loaded: a test may ``insmod /lib/modules/veth.ko`` (a namespace in the guest).
EXTRA_MODULES = ("veth",)
#: Where in the kernel package the modules above and their dependencies are looked for.
MODULE_DIRECTORIES = ("kernel/drivers/virtio/", "kernel/drivers/net/", "kernel/net/core/")
#: The guest's scripts, put in the initramfs as /init, /bin/http and /bin/imds.
SCRIPTS = Path(__file__).resolve().parent / "vm-guest"
GUEST_SCRIPTS = ("init", "http", "imds")
#: Bumped when what is taken from the packages, or how the initramfs is laid out, changes.
PARTS_FORMAT = 2
IMAGE_FORMAT = 1


class GuestImageError(Exception):
    """The guest's kernel and initramfs could not be made; the message says which step."""


# -- Debian packages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def pinned(self) -> str:
        return f"{self.name}={self.version}"


def _run(argv: Sequence[str], what: str, timeout: float = 600, cwd: Path | None = None) -> str:
    """Run `argv`, returning its stdout; a :class:`GuestImageError` saying `what` failed, with
    the command's own words, if it does not exit 0."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
        )
    except FileNotFoundError as error:
        raise GuestImageError(f"{what}: {argv[0]} not found ({error})") from None
    except subprocess.TimeoutExpired:
        raise GuestImageError(f"{what}: {' '.join(argv)} took more than {timeout} s") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip()[-2000:]
        raise GuestImageError(f"{what}: {' '.join(argv)} exited {result.returncode}: {said}")
    return result.stdout


def _stanzas(text: str) -> list[dict[str, str]]:
    """The fields of each paragraph of ``apt-cache show`` (continuation lines dropped)."""
    found = []
    for paragraph in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in paragraph.splitlines()
            if ": " in line and line[0] != " "
        )
        if fields:
            found.append(fields)
    return found


def packages_from(shown: str) -> tuple[Package, Package]:
    """(kernel, busybox) from ``apt-cache show --no-all-versions`` of both: the versioned kernel
    package that ``linux-image-amd64`` depends on, pinned as it pins it. LookupError if the
    text lacks either."""
    stanzas = {fields.get("Package"): fields for fields in _stanzas(shown)}
    kernel = re.match(
        r"(linux-image-\S+) \(= (\S+)\)", stanzas.get(KERNEL_METAPACKAGE, {}).get("Depends", "")
    )
    busybox = stanzas.get(BUSYBOX_PACKAGE, {}).get("Version")
    if kernel is None or busybox is None:
        raise LookupError(f"apt's lists name no {KERNEL_METAPACKAGE} or {BUSYBOX_PACKAGE}")
    return Package(kernel.group(1), kernel.group(2)), Package(BUSYBOX_PACKAGE, busybox)


def resolve_packages() -> tuple[Package, Package]:
    """(kernel, busybox) as apt's lists name them now (:func:`packages_from`); LookupError if
    the lists lack them."""
    try:
        shown = _run(
            ["apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE, BUSYBOX_PACKAGE],
            f"asking apt about {KERNEL_METAPACKAGE} and {BUSYBOX_PACKAGE}",
        )
    except GuestImageError as error:
        if shutil.which("apt-cache") is None:
            raise
        raise LookupError(str(error)) from None
    return packages_from(shown)


def _apt_update() -> None:
    _run(["apt-get", "update"], "updating apt's package lists (apt-get update)")


def _download(packages: Sequence[Package], directory: Path) -> dict[str, Path]:
    """``apt-get download`` of the exact versions into `directory`: name -> .deb file."""
    try:  # apt downloads as its own user where it can write (otherwise it warns and uses root)
        entry = pwd.getpwnam("_apt")
        os.chown(directory, entry.pw_uid, -1)
    except (KeyError, PermissionError):
        pass
    _run(
        ["apt-get", "download", "-q", *(package.pinned for package in packages)],
        "downloading the guest's packages (apt-get download)",
        cwd=directory,
    )
    found = {}
    for package in packages:
        debs = sorted(directory.glob(f"{package.name}_*.deb"))
        if not debs:
            raise GuestImageError(f"apt-get download left no {package.name}_*.deb in {directory}")
        found[package.name] = debs[0]
    return found


@contextmanager
def _members(deb: Path) -> Iterator[Iterator[tuple[str, Callable[[], bytes]]]]:
    """The regular files of `deb`'s file system tree as (path without "./", read), streamed from
    ``dpkg-deb --fsys-tarfile`` (nothing is written to disk)."""
    process = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    archive = tarfile.open(fileobj=process.stdout, mode="r|")

    def members() -> Iterator[tuple[str, Callable[[], bytes]]]:
        for member in archive:
            if member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                yield member.name.removeprefix("./"), extracted.read

    try:
        yield members()
    finally:
        archive.close()
        process.stdout.close()
        errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.wait() not in (0, -signal.SIGPIPE) and errors:
            raise GuestImageError(f"dpkg-deb --fsys-tarfile {deb} failed: {errors.strip()}")


def _module_name(path: str) -> str:
    return Path(path).name.removesuffix(".ko").replace("-", "_")


def _depends(module: bytes) -> list[str]:
    """The modules a ``.ko`` file depends on, from its ``depends=`` modinfo string."""
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", module)
    if match is None or not match.group(1):
        return []
    return [name.replace("-", "_") for name in match.group(1).decode().split(",")]


def load_order(modules: dict[str, bytes], wanted: Sequence[str]) -> list[str]:
    """`wanted` with everything they depend on, each after its dependencies."""
    ordered: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in chain:
            raise GuestImageError(f"modules depend on each other in a circle: {chain}")
        if name not in modules:
            raise GuestImageError(
                f"module {name} (needed by {chain[-1] if chain else 'the guest'}) is not in "
                f"{', '.join(MODULE_DIRECTORIES)} of the kernel package"
            )
        for dependency in _depends(modules[name]):
            visit(dependency, (*chain, name))
        ordered.append(name)

    for name in wanted:
        visit(name, ())
    return ordered


XZ_MAGIC = b"\xfd7zXZ\x00"


def bootable_kernel(vmlinuz: bytes, config: str) -> tuple[bytes, str]:
    """What QEMU should boot: (kernel, kind). The uncompressed ELF inside `vmlinuz`, which QEMU
    enters directly through its PVH note, when the kernel has one (``CONFIG_PVH=y``) and is
    xz-compressed (Debian's are): TCG then skips the kernel's own decompression, about 6 s of a
    10 s boot here. Otherwise the bzImage as it is."""
    start = vmlinuz.find(XZ_MAGIC)
    if "\nCONFIG_PVH=y\n" in config and start >= 0:
        try:
            elf = lzma.LZMADecompressor().decompress(vmlinuz[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            return elf, "vmlinux (PVH entry)"
    return vmlinuz, "bzImage"


def _extract_parts(debs: dict[str, Path], kernel: Package, busybox: Package, into: Path) -> None:
    """The kernel, busybox, the modules, ``boot-order`` and ``manifest.json`` into `into`."""
    modules: dict[str, bytes] = {}
    vmlinuz = b""
    config = ""
    with _members(debs[kernel.name]) as members:
        for path, read in members:
            if re.fullmatch(r"boot/vmlinuz-[^/]+", path):
                vmlinuz = read()
            elif re.fullmatch(r"boot/config-[^/]+", path):
                config = read().decode(errors="replace")
            else:
                match = re.fullmatch(r"(?:usr/)?lib/modules/[^/]+/(.+/)([^/]+\.ko)", path)
                if match and match.group(1) in MODULE_DIRECTORIES:
                    modules[_module_name(match.group(2))] = read()
    if not vmlinuz:
        raise GuestImageError(f"no boot/vmlinuz-* in {debs[kernel.name]}")
    with _members(debs[busybox.name]) as members:
        for path, read in members:
            if path == "bin/busybox":
                (into / "busybox").write_bytes(read())
    if not (into / "busybox").exists():
        raise GuestImageError(f"no bin/busybox in {debs[busybox.name]}")
    boot = load_order(modules, BOOT_MODULES)
    (into / "modules").mkdir()
    for name in load_order(modules, [*BOOT_MODULES, *EXTRA_MODULES]):
        (into / "modules" / f"{name}.ko").write_bytes(modules[name])
    (into / "boot-order").write_text("".join(f"{name}\n" for name in boot), encoding="utf-8")
    bootable, kind = bootable_kernel(vmlinuz, config)
    (into / "kernel").write_bytes(bootable)
    manifest = {
        "packages": {package.name: package.version for package in (kernel, busybox)},
        "kernel": kind,
    }
    (into / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


# -- the initramfs -------------------------------------------------------------------------------


class Cpio:
    """A ``newc`` cpio archive (what the kernel unpacks as an initramfs), made in memory with
    fixed inode numbers and times so the same inputs give the same bytes."""

    def __init__(self) -> None:
        self._data = io.BytesIO()
        self._inode = 0

    def _entry(
        self, name: str, mode: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._inode += 1
        encoded = name.encode() + b"\x00"
        fields = (self._inode, mode, 0, 0, 1, 0, len(body), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        self._data.write(header + encoded)
        self._data.write(b"\x00" * (-(len(header) + len(encoded)) % 4))
        self._data.write(body)
        self._data.write(b"\x00" * (-len(body) % 4))

    def directory(self, name: str, permissions: int = 0o755) -> None:
        self._entry(name, 0o040000 | permissions)

    def file(self, name: str, body: bytes, permissions: int = 0o644) -> None:
        self._entry(name, 0o100000 | permissions, body)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def character_device(self, name: str, major: int, minor: int, permissions: int = 0o600) -> None:
        self._entry(name, 0o020000 | permissions, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._data.getvalue()


def initramfs(parts: Path, scripts: Path = SCRIPTS) -> bytes:
    """The gzip'd initramfs: busybox, the modules, /init and the helper scripts."""
    archive = Cpio()
    for directory in ("bin", "dev", "proc", "sys", "run", "root", "etc", "lib", "lib/modules"):
        archive.directory(directory)
    archive.directory("tmp", 0o1777)
    # The kernel opens /dev/console for /init before anything is mounted.
    archive.character_device("dev/console", 5, 1)
    archive.file("bin/busybox", (parts / "busybox").read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("init", (scripts / "init").read_bytes(), 0o755)
    for script in ("http", "imds"):
        archive.file(f"bin/{script}", (scripts / script).read_bytes(), 0o755)
    for module in sorted((parts / "modules").iterdir()):
        archive.file(f"lib/modules/{module.name}", module.read_bytes())
    archive.file("lib/modules/boot-order", (parts / "boot-order").read_bytes())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


# -- the cache -----------------------------------------------------------------------------------


def _key(recipe: object) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached(final: Path, build: Callable[[Path], None]) -> Path:
    """`final`, made by `build` into a temporary directory beside it first if it is missing;
    under the cache's lock, so that one run builds and the others wait and reuse it."""
    if final.is_dir():
        return final
    with _locked(final.parent):
        if final.is_dir():  # made by another run while this one waited for the lock
            return final
        building = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
        try:
            build(building)
            building.chmod(0o755)
            building.rename(final)
        finally:
            if building.exists():
                shutil.rmtree(building)
    return final


@dataclass(frozen=True)
class GuestImage:
    """A kernel and an initramfs ready to boot, and the Debian packages they came from."""

    kernel: Path
    initrd: Path
    #: Debian package -> version.
    packages: dict[str, str]
    #: "vmlinux (PVH entry)" or "bzImage" (see :func:`bootable_kernel`).
    kernel_kind: str


def _apt_state() -> str:
    """A fingerprint of what apt's answers depend on (its lists, sources and pins), so that an
    unchanged apt is not asked again (``apt-cache`` takes a second here)."""
    files = [
        path
        for path in Path("/var/lib/apt/lists").glob("*")
        if path.is_file() and path.name != "lock"
    ]
    files += [path for path in Path("/etc/apt").rglob("*") if path.is_file()]
    return _key(sorted((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files))


def _packages(cache: Path, say: Callable[[str], None]) -> tuple[Package, Package, bool]:
    """(kernel, busybox, whether apt-get update ran): remembered in the cache for as long as
    apt's state is unchanged, else asked of apt (updating its lists if they lack them)."""
    remembered = cache / "packages.json"
    state = _apt_state()
    try:
        known = json.loads(remembered.read_text(encoding="utf-8"))
        if known["apt"] == state:
            return Package(*known["kernel"]), Package(*known["busybox"]), False
    except (OSError, ValueError, KeyError, TypeError):
        pass
    updated = False
    try:
        kernel, busybox = resolve_packages()
    except LookupError:
        say("apt's lists lack the guest's packages: apt-get update")
        _apt_update()
        updated = True
        try:
            kernel, busybox = resolve_packages()
        except LookupError:
            raise GuestImageError(
                f"apt knows no {KERNEL_METAPACKAGE} or {BUSYBOX_PACKAGE} even after apt-get "
                "update: the guest is made from Debian 12's packages"
            ) from None
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    record = {"apt": _apt_state(), "kernel": [kernel.name, kernel.version],
              "busybox": [busybox.name, busybox.version]}  # fmt: skip
    with tempfile.NamedTemporaryFile("w", dir=cache, prefix=".packages-", delete=False) as file:
        json.dump(record, file)
    os.replace(file.name, remembered)
    return kernel, busybox, updated


class _StaleLists(Exception):
    """apt-get download failed with lists apt-get update did not just fetch."""


def guest_image(cache: Path = CACHE_DIR, log: Callable[[str], None] | None = None) -> GuestImage:
    """The guest for the packages apt offers now, fetched and built first if not cached.
    Runs ``apt-get update`` when apt's lists lack the packages, or name versions the mirror no
    longer has (the download fails). `log`: told of each slow step."""
    say = log or (lambda message: None)
    try:
        return _guest_image(cache, say, may_update=True)
    except _StaleLists as error:
        say(f"{error}: apt-get update, then again")
        _apt_update()
        return _guest_image(cache, say, may_update=False)


def _guest_image(cache: Path, say: Callable[[str], None], may_update: bool) -> GuestImage:
    kernel, busybox, updated = _packages(cache, say)
    recipe = {
        "packages": [kernel.pinned, busybox.pinned],
        "modules": [BOOT_MODULES, EXTRA_MODULES, MODULE_DIRECTORIES],
        "format": PARTS_FORMAT,
    }
    parts_key = _key(recipe)

    def build_parts(into: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as downloads:
            say(f"downloading {kernel.pinned} and {busybox.pinned}")
            try:
                debs = _download((kernel, busybox), Path(downloads))
            except GuestImageError as error:
                if may_update and not updated:
                    raise _StaleLists(str(error)) from None
                raise
            say("taking the kernel, the modules and busybox out of the packages")
            _extract_parts(debs, kernel, busybox, into)

    parts = _cached(cache / f"parts-{parts_key}", build_parts)
    scripts = {
        name: (SCRIPTS / name).read_text(encoding="utf-8") for name in ("init", "http", "imds")
    }
    image_key = _key({"parts": parts_key, "scripts": scripts, "format": IMAGE_FORMAT})

    def build_image(into: Path) -> None:
        say("building the initramfs")
        (into / "initrd.gz").write_bytes(initramfs(parts))

    image = _cached(cache / f"image-{image_key}", build_image)
    manifest = json.loads((parts / "manifest.json").read_text(encoding="utf-8"))
    return GuestImage(
        parts / "kernel", image / "initrd.gz", manifest["packages"], manifest["kernel"]
    )
