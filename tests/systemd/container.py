"""A real systemd as PID 1, in a ``systemd-nspawn`` container, for the tests in tests/systemd.

The root file system is a minimal Debian 12 (bookworm) made by ``debootstrap`` with `PACKAGES`,
built once and cached under `CACHE_DIR` in a directory named for a hash of everything that went
into it: a changed package list builds a new one, and a build goes into a temporary directory
renamed into place only once complete. Each test run boots a fresh copy of it, so runs share no
state, with its own network namespace (``--private-network``: only a loopback, so nothing in it
reaches or collides with the host's ports) and without machined (``--register=no
--keep-unit``), which a host without systemd does not have. Commands run inside with ``nsenter``
into every namespace of the container's PID 1.

:meth:`Container.close` stops the container (SIGTERM to nspawn, which has systemd power off;
SIGKILL after a timeout), removes the copy and the per-run control groups, and
:meth:`Container.leftovers` says what, if anything, is still on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

#: Where built root file systems are kept between runs (root's: it needs root to build anyway).
CACHE_DIR = Path(os.environ.get("ROLECALL_TEST_CACHE", "/var/cache/rolecall-tests"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: What the tests need inside: systemd as init, D-Bus (logind and other units need the bus), the
#: Python RoleCall is installed with (3.11.2, with venv), ``ip`` and ``ps``/``pgrep``.
PACKAGES = ("dbus", "iproute2", "procps", "python3-venv", "python3.11", "systemd", "systemd-sysv")
#: Bumped when what `_prepare` does to a fresh tree changes, so that cached trees are rebuilt.
TREE_FORMAT = 1
HOSTNAME = "rolecall-test"
#: The environment of commands run inside (none of the host's: its PATH, its virtualenv).
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class ContainerError(Exception):
    """The container could not be built, booted or driven; the message says which step."""


def tree_key(packages: Sequence[str] = PACKAGES) -> str:
    """The cache key: a hash of everything that decides what the built tree holds."""
    recipe = {
        "suite": SUITE,
        "mirror": MIRROR,
        "variant": "minbase",
        "packages": sorted(packages),
        "format": TREE_FORMAT,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cached_tree(
    packages: Sequence[str] = PACKAGES, log: IO[str] | None = None
) -> tuple[Path, bool]:
    """The cached root file system for `packages`, built first if missing: (path, built now)."""
    key = tree_key(packages)
    final = CACHE_DIR / f"bookworm-{key}"
    if (final / "usr/lib/systemd/systemd").exists():
        return final, False
    CACHE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=CACHE_DIR))
    # mkdtemp's 0700 would be the container's "/": no service user could reach anything.
    building.chmod(0o755)
    try:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
             f"--keyring={KEYRING}", SUITE, str(building), MIRROR],
            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
        )  # fmt: skip
        if result.returncode != 0:
            raise ContainerError(
                f"debootstrap {SUITE} into {building} failed ({result.returncode})"
                + (f":\n{result.stdout[-3000:]}" if result.stdout else "")
            )
        _prepare(building)
        try:
            building.rename(final)
        except OSError:
            if not (final / "usr/lib/systemd/systemd").exists():
                raise
            # Another run built the same tree meanwhile: theirs is as good; ours is removed below.
        return final, True
    finally:
        if building.exists():
            remove_tree(building)


def _prepare(root: Path) -> None:
    """What every copy should start with: a fixed host name, no package caches (smaller and
    faster to copy; the tests install nothing from Debian inside)."""
    (root / "etc/hostname").write_text(f"{HOSTNAME}\n", encoding="utf-8")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path` in this process's mount namespace, deepest first."""
    found = []
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            # The mount point is the fifth field, with spaces and the like octal-escaped.
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda each: len(each.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a directory tree, never following into anything mounted below it (a failed
    debootstrap can leave its /proc mounted; a removal would walk into the host's)."""
    for point in mounts_under(path):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    left = mounts_under(path)
    if left:
        raise ContainerError(f"not removing {path}: still mounted there: {left}")
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise ContainerError(f"could not remove {path}")


# -- control groups on a host without systemd ------------------------------------------------


def _host_has_systemd() -> bool:
    """Whether systemd is the host's init (sd_booted(): /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()


def _cgroup_hierarchies() -> list[tuple[Path, str]]:
    """(mount point, this process's path in it) for the cgroup hierarchies nspawn uses: the
    unified one (cgroup2) and systemd's named v1 hierarchy, where mounted."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as own:
        for line in own:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if number == "0" and controllers == "":
                paths["cgroup2"] = path
            elif controllers == "name=systemd":
                paths["name=systemd"] = path
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            kind, options = fields[separator + 1], fields[separator + 3]
            point = Path(fields[4])
            if kind == "cgroup2" and "cgroup2" in paths:
                found.append((point, paths.pop("cgroup2")))
            elif (
                kind == "cgroup"
                and "name=systemd" in options.split(",")
                and ("name=systemd" in paths)
            ):
                found.append((point, paths.pop("name=systemd")))
    return found


def _processes_in(group: Path) -> list[int]:
    pids = []
    for procs in group.rglob("cgroup.procs"):
        try:
            pids += [int(pid) for pid in procs.read_text().split()]
        except OSError:
            continue
    return pids


def _remove_cgroup(group: Path, timeout: float = 10) -> None:
    """Kill what is left in `group` and remove it with its children, deepest first."""
    deadline = time.monotonic() + timeout
    while group.exists():
        for pid in _processes_in(group):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        children = sorted(
            (each for each in group.rglob("*") if each.is_dir()),
            key=lambda each: len(each.parts),
            reverse=True,
        )
        for directory in [*children, group]:
            try:
                directory.rmdir()
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise ContainerError(f"could not remove the control group {group}")
        if group.exists():
            time.sleep(0.1)


# -- the container ---------------------------------------------------------------------------


class Container:
    """A fresh copy of a cached root file system, booted with systemd as PID 1."""

    def __init__(self, tree: Path, workdir: Path) -> None:
        self.name = f"rct-{uuid.uuid4().hex[:10]}"
        self.workdir = workdir
        #: The copy this container boots (beside the cache: a same-file-system copy is fast).
        self.root = CACHE_DIR / f"run-{self.name}"
        self.console = workdir / "console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._cgroups: list[Path] = []
        self._background: list[subprocess.Popen[str]] = []
        #: Host directories bound read-only into the container at boot: (host path, inside).
        self.read_only_binds: list[tuple[Path, str]] = []
        started = time.monotonic()
        result = subprocess.run(
            ["cp", "--archive", "--reflink=auto", str(tree), str(self.root)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            remove_tree(self.root)
            raise ContainerError(f"copying {tree} failed: {result.stderr.strip()}")
        self.copy_seconds = time.monotonic() - started

    def path(self, inside: str) -> Path:
        """Where a path of the container is on the host (for files put there before booting)."""
        return self.root / inside.lstrip("/")

    def boot(self, timeout: float = 60) -> str:
        """Start systemd-nspawn and wait until systemd has finished booting: the state
        ``systemctl is-system-running --wait`` reports (running, or degraded)."""
        argv = [
            "systemd-nspawn", "--boot", "--register=no", "--keep-unit",
            f"--directory={self.root}", f"--machine={self.name}", "--private-network",
            "--settings=no", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            "--console=read-only",
        ]  # fmt: skip
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.read_only_binds]
        if _host_has_systemd():
            # --keep-unit then needs a unit of its own to keep: a transient scope.
            argv = ["systemd-run", "--quiet", "--scope", f"--unit={self.name}", *argv]
        else:
            # No systemd to give nspawn a control group: one per run, under this process's own
            # in each hierarchy, so nspawn's payload/ and supervisor/ never meet another run's.
            for mount_point, own in _cgroup_hierarchies():
                group = mount_point / own.lstrip("/") / f"rolecall-test-{self.name}"
                group.mkdir()
                self._cgroups.append(group)
            moves = "".join(f'echo $$ > "{group}/cgroup.procs" && ' for group in self._cgroups)
            argv = ["sh", "-c", f'{moves}exec "$@"', "sh", *argv]
        with open(self.console, "wb") as console:
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        self.leader = self._wait_for_leader(deadline)
        while True:
            remaining = max(1, round(deadline - time.monotonic()))
            result = self.run(
                ["timeout", str(remaining), "systemctl", "is-system-running", "--wait"],
                check=False,
                timeout=remaining + 10,
            )
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return state
            if time.monotonic() > deadline:
                jobs = self.run(["systemctl", "list-jobs"], check=False, timeout=10).stdout
                raise ContainerError(
                    f"systemd did not finish booting in {timeout} s"
                    f" ({state or result.stderr.strip()}); its jobs:\n{jobs}\n"
                    + self.console_tail()
                )
            time.sleep(0.2)

    def _wait_for_leader(self, deadline: float) -> int:
        """The container's PID 1 as the host sees it: the process below nspawn that is PID 1 in
        its own PID namespace and runs systemd."""
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited with {self.nspawn.returncode}:\n" + self.console_tail()
                )
            for pid in _descendants(self.nspawn.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                nspids = next(
                    (line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")),
                    [],
                )
                if len(nspids) > 1 and nspids[-1] == "1" and comm == "systemd":
                    return pid
            time.sleep(0.05)
        raise ContainerError("the container's systemd did not start:\n" + self.console_tail())

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _command(self, argv: Sequence[str], env: dict[str, str] | None) -> list[str]:
        environment = dict(INSIDE_ENV, **(env or {}))
        assignments = [f"{key}={value}" for key, value in environment.items()]
        return [
            "nsenter", f"--target={self.leader}", "--all", "--root", "--wd", "--",
            "env", "-i", *assignments, *argv,
        ]  # fmt: skip

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside (as root, in every namespace of the container's PID 1)."""
        if not self.leader:
            raise ContainerError("the container is not running")
        result = subprocess.run(
            self._command(argv, env),
            capture_output=True, text=True, timeout=timeout, input=input,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited with {result.returncode} inside the container:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def shell(self, script: str, **options: object) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside (``sh -ec``)."""
        return self.run(["sh", "-ec", script], **options)  # type: ignore[arg-type]

    def spawn(
        self, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start `argv` inside without waiting; it is killed when the container stops."""
        process = subprocess.Popen(
            self._command(argv, env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._background.append(process)
        return process

    def close(self, timeout: float = 15) -> None:
        """Stop the container and remove everything it made on the host, whatever state it is
        in: SIGTERM to nspawn (systemd powers off), then SIGKILL to nspawn and the container's
        PID 1 (which takes every process of its PID namespace with it)."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.nspawn.send_signal(signal.SIGTERM)
                try:
                    self.nspawn.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait(10)
            if self.leader and _alive(self.leader):
                os.kill(self.leader, signal.SIGKILL)
                _wait_gone(self.leader, 10)
            for process in self._background:
                if process.poll() is None:
                    process.kill()
                process.communicate(timeout=10)
        finally:
            for group in self._cgroups:
                _remove_cgroup(group)
            shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
            if self.root.exists():
                remove_tree(self.root)

    def leftovers(self) -> list[str]:
        """What this container left on the host after :meth:`close` (nothing, or a defect)."""
        found = []
        if self.root.exists():
            found.append(f"its root directory {self.root}")
        found += [f"a mount at {point}" for point in _all_mounts_naming(self.name)]
        if self.nspawn is not None and self.nspawn.poll() is None:
            found.append(f"systemd-nspawn (pid {self.nspawn.pid})")
        if self.leader and _alive(self.leader):
            found.append(f"its systemd (pid {self.leader})")
        found += [f"the control group {group}" for group in self._cgroups if group.exists()]
        found += [
            f"process {process.pid} ({str(process.args)[-80:]})"
            for process in self._background
            if process.poll() is None
        ]
        if Path(f"/run/systemd/nspawn/propagate/{self.name}").exists():
            found.append(f"/run/systemd/nspawn/propagate/{self.name}")
        return found


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(each) for each in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _all_mounts_naming(name: str) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [line.split()[4] for line in mountinfo if name in line.split()[4]]
