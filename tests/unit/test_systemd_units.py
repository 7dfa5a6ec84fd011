"""The unit files in systemd/: systemd's own checker accepts them, and they say what the daemons
need and no more (the controller no capability, the agent three, neither's namespaces hidden
from the host where it matters).

``systemd-analyze verify`` insists that ExecStart= names an executable that exists, and
/opt/rolecall/venv is not there on a development machine; each unit is verified as a copy whose
ExecStart= names the same entry point in this virtualenv (--root= would need a whole tree of
system units beside it). The original paths are checked separately.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import capabilities
from agent.cli import DEFAULT_OWNERSHIP
from agent.config import DEFAULT_CONFIG_PATH as AGENT_CONFIG_PATH
from agent.config import DEFAULT_USER
from agent.privileged import KEPT_CAPABILITIES
from controller.config import DEFAULT_CONFIG_PATH as CONTROLLER_CONFIG_PATH
from controller.config import DEFAULT_STATE_DIR

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BIN = "/opt/rolecall/venv/bin/"
VENV_BIN = Path(sys.executable).parent
UNITS = ("rolecall-controller.service", "rolecall-agent.service")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections → keys → every value assigned, in order (systemd lets keys repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: keep each setting on one line"
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        assert section is not None, f"{path.name}:{number}: a setting before any section"
        key, separator, value = line.partition("=")
        assert separator, f"{path.name}:{number}: not a setting: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(SYSTEMD_DIR / name)["Service"]


def only(settings: dict[str, list[str]], key: str) -> str:
    """The one value of a key that must be set exactly once."""
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}= should be set once, found {values}"
    return values[0]


def words(settings: dict[str, list[str]], key: str) -> set[str]:
    """A list setting's effective items (an empty assignment resets the list)."""
    items: set[str] = set()
    for value in settings.get(key, []):
        items = set() if not value else items | set(value.split())
    return items


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: it comes with Debian's systemd package (make install)"
    return path


# systemd's own checks


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(name: str, tmp_path: Path) -> None:
    text = (SYSTEMD_DIR / name).read_text(encoding="utf-8")
    assert INSTALLED_BIN in text
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED_BIN, f"{VENV_BIN}/"), encoding="utf-8")
    done = subprocess.run(
        [systemd_tool("systemd-analyze"), "verify", "--man=no", "--recursive-errors=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings with exit status 0: any output fails.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize(("name", "threshold"), [(UNITS[0], 2.0), (UNITS[1], 5.0)])
def test_systemd_analyze_security_rates_the_exposure_low(
    name: str, threshold: float, tmp_path: Path
) -> None:
    copy = tmp_path / name
    shutil.copy(SYSTEMD_DIR / name, copy)
    done = subprocess.run(
        [
            systemd_tool("systemd-analyze"),
            "security",
            "--offline=yes",
            f"--threshold={round(threshold * 10)}",
            "--no-pager",
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, f"over {threshold}: {verdict}"


def test_sysusers_and_tmpfiles_make_the_state_directory_for_the_controller_user(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to give the directory its owner")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, entries in (
        ("systemd-sysusers", "rolecall.sysusers"),
        ("systemd-tmpfiles", "rolecall.tmpfiles"),
    ):
        arguments = [systemd_tool(tool), f"--root={root}"]
        if tool == "systemd-tmpfiles":
            arguments.append("--create")
        done = subprocess.run(
            [*arguments, str(SYSTEMD_DIR / entries)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    users = {
        fields[0]: fields
        for fields in (line.split(":") for line in (root / "etc/passwd").read_text().splitlines())
    }
    assert users["rolecall"][5] == str(DEFAULT_STATE_DIR)
    assert users["rolecall"][6].endswith("nologin")
    state = (root / str(DEFAULT_STATE_DIR).lstrip("/")).stat()
    assert state.st_uid == int(users["rolecall"][2])
    assert oct(state.st_mode & 0o7777) == "0o700"
    configuration = (root / "etc/rolecall").stat()
    assert (configuration.st_uid, oct(configuration.st_mode & 0o7777)) == (0, "0o755")
    controller = service("rolecall-controller.service")
    assert only(controller, "User") == "rolecall"
    assert only(controller, "StateDirectoryMode") == "0700"


# what both daemons share


@pytest.mark.parametrize("name", UNITS)
def test_both_units_are_type_notify_and_start_the_virtualenvs_entry_point(name: str) -> None:
    settings = service(name)
    assert only(settings, "Type") == "notify"
    program = name.removesuffix(".service")
    assert only(settings, "ExecStart").split()[0] == INSTALLED_BIN + program
    assert (VENV_BIN / program).exists(), f"setup.cfg installs no {program} entry point"
    assert only(settings, "NoNewPrivileges") == "yes"
    assert int(only(settings, "LimitNOFILE")) >= 65536
    assert only(parse_unit(SYSTEMD_DIR / name)["Install"], "WantedBy") == "multi-user.target"


def test_configuration_and_state_directories_are_where_the_daemons_look() -> None:
    controller, agent = service(UNITS[0]), service(UNITS[1])
    assert Path("/etc", only(agent, "ConfigurationDirectory")) == AGENT_CONFIG_PATH.parent
    assert CONTROLLER_CONFIG_PATH.parent == AGENT_CONFIG_PATH.parent
    assert Path("/var/lib", only(controller, "StateDirectory")) == DEFAULT_STATE_DIR


def test_the_controller_checks_its_configuration_before_it_serves() -> None:
    controller = service(UNITS[0])
    assert only(controller, "ExecStartPre").split() == [
        INSTALLED_BIN + "rolecall-controller",
        "check-config",
    ]


def test_only_root_owns_the_configuration_directory() -> None:
    """The agent (root) trusts /etc/rolecall: the controller, whose user is not root, must not
    make systemd hand it that directory (ConfigurationDirectory= chowns it to User=)."""
    controller, agent = service(UNITS[0]), service(UNITS[1])
    assert "ConfigurationDirectory" not in controller
    assert only(agent, "User") == "root"


def test_the_agent_is_never_given_up_on_and_checks_its_configuration_first() -> None:
    unit = parse_unit(SYSTEMD_DIR / UNITS[1])
    assert only(unit["Unit"], "StartLimitIntervalSec") == "0"
    assert only(unit["Service"], "ExecStartPre").split() == [
        INSTALLED_BIN + "rolecall-agent",
        "--check-config",
    ]
    assert only(unit["Service"], "Restart") == "always"


@pytest.mark.parametrize("name", UNITS)
def test_memory_deny_write_execute_stays_off(name: str) -> None:
    """See the next test for why."""
    assert service(name).get("MemoryDenyWriteExecute", ["no"])[-1] == "no"


def test_tls_setup_fails_under_memory_deny_write_execute() -> None:
    """Why neither unit sets MemoryDenyWriteExecute=yes: under the kernel's equivalent
    (PR_SET_MDWE, which systemd uses where it exists) pyOpenSSL cannot make the callbacks that
    Twisted's TLS sets up. When this fails, the option can be turned on in both units."""
    libc = ctypes.CDLL(None, use_errno=True)
    probe = libc.prctl(66, 0, 0, 0, 0)  # PR_GET_MDWE
    if probe < 0 and ctypes.get_errno() == errno.EINVAL:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 and later do)")
    code = """
import ctypes, sys
from OpenSSL import SSL
if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("prctl failed")
context = SSL.Context(SSL.TLS_METHOD)
try:
    context.set_alpn_select_callback(lambda connection, offered: offered[0])
except MemoryError as error:
    print("refused:", error)
else:
    print("allowed")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: Cannot allocate write+execute memory"), done.stdout


# the controller


def test_controller_has_no_capability_and_runs_as_its_own_user() -> None:
    settings = service("rolecall-controller.service")
    assert settings["CapabilityBoundingSet"] == [""]
    assert words(settings, "AmbientCapabilities") == set()
    assert only(settings, "User") == "rolecall"
    assert "DynamicUser" not in settings


def test_controller_state_is_private_and_the_rest_read_only() -> None:
    settings = service("rolecall-controller.service")
    expected = {
        "StateDirectory": "rolecall",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "Restart": "on-failure",
    }
    assert {key: only(settings, key) for key in expected} == expected
    assert words(settings, "RestrictAddressFamilies") == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in words(settings, "SystemCallFilter")


# the controller on PostgreSQL

DROP_IN = "rolecall-controller-postgresql.conf"
#: Where docs/operations.md installs the drop-in.
DROP_IN_PATH = "/etc/systemd/system/rolecall-controller.service.d/postgresql.conf"


def controller_with_drop_in(directory: Path, drop_in: str | None = None) -> Path:
    """The controller's unit as in the verify test above, with the PostgreSQL drop-in (or
    `drop_in`'s text) in its .d directory, where systemd-analyze looks for drop-ins."""
    unit = directory / UNITS[0]
    text = (SYSTEMD_DIR / UNITS[0]).read_text(encoding="utf-8")
    unit.write_text(text.replace(INSTALLED_BIN, f"{VENV_BIN}/"), encoding="utf-8")
    (directory / f"{UNITS[0]}.d").mkdir()
    if drop_in is None:
        drop_in = (SYSTEMD_DIR / DROP_IN).read_text(encoding="utf-8")
    (directory / f"{UNITS[0]}.d" / "postgresql.conf").write_text(drop_in, encoding="utf-8")
    return unit


def verify(unit: Path) -> tuple[int, str]:
    done = subprocess.run(
        [systemd_tool("systemd-analyze"), "verify", "--man=no", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_systemd_analyze_verify_accepts_the_controller_with_the_postgresql_drop_in(
    tmp_path: Path,
) -> None:
    assert verify(controller_with_drop_in(tmp_path)) == (0, "")


def test_systemd_analyze_verify_reads_the_drop_in_and_knows_its_specifier(tmp_path: Path) -> None:
    """The test above can fail: systemd 252 reads the drop-in beside the unit and resolves %d
    (the credentials directory) but no unknown specifier."""
    text = (SYSTEMD_DIR / DROP_IN).read_text(encoding="utf-8")
    assert "%d/" in text
    status, output = verify(controller_with_drop_in(tmp_path, text.replace("%d/", "%Q/")))
    assert status != 0
    assert "Failed to resolve specifiers in PGPASSFILE=%Q/pgpass" in output


def test_the_drop_in_hands_the_password_file_over_as_a_credential() -> None:
    drop_in = parse_unit(SYSTEMD_DIR / DROP_IN)
    assert list(drop_in) == ["Unit", "Service"]
    settings = drop_in["Service"]
    name, _, source = only(settings, "LoadCredential").partition(":")
    assert source == "/etc/rolecall/pgpass"
    assert CONTROLLER_CONFIG_PATH.parent == Path(source).parent
    # libpq reads the copy in the credentials directory, under the credential's name.
    assert only(settings, "Environment") == f"PGPASSFILE=%d/{name}"
    # Nothing else: the drop-in loosens none of the unit's hardening.
    assert set(settings) == {"LoadCredential", "Environment"}
    documented = (SYSTEMD_DIR.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    assert f"systemd/{DROP_IN} {DROP_IN_PATH}" in documented


def test_on_postgresql_the_controller_is_never_given_up_on() -> None:
    """A database that is down at start fails check-config quickly: systemd must keep
    restarting the controller (tests/systemd/test_postgresql.py shows it coming back)."""
    assert parse_unit(SYSTEMD_DIR / DROP_IN)["Unit"] == {"StartLimitIntervalSec": ["0"]}
    assert only(service(UNITS[0]), "Restart") == "on-failure"


def test_no_password_is_in_the_units() -> None:
    """The password reaches libpq as a file only: no PGPASSWORD, no password= in a DSN."""
    for path in (SYSTEMD_DIR / UNITS[0], SYSTEMD_DIR / DROP_IN):
        for values in parse_unit(path).get("Service", {}).values():
            for value in values:
                assert "PGPASSWORD" not in value and "password=" not in value.lower(), value


def test_the_controller_starts_after_a_local_postgresql_without_pulling_it_in() -> None:
    unit = parse_unit(SYSTEMD_DIR / UNITS[0])["Unit"]
    assert "postgresql.service" in words(unit, "After")
    assert "postgresql.service" not in words(unit, "Wants") | words(unit, "Requires")


def test_systemd_analyze_security_rates_the_controller_with_the_drop_in_as_low(
    tmp_path: Path,
) -> None:
    unit = controller_with_drop_in(tmp_path)
    done = subprocess.run(
        [systemd_tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20",
         "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, f"over 2.0: {verdict}"


# the agent

CAPABILITIES = {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_KILL"}
#: Only to start the serving process unprivileged; the root process drops them right after.
SPAWN_CAPABILITIES = {"CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"}
#: Settings that run a service in a mount namespace of its own, from which systemd lets no mount
#: reach the host: a namespace the agent names in /run/netns would be seen by no one else.
MOUNT_NAMESPACE_SETTINGS = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "PrivateIPC",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "MountFlags",
    "RootDirectory",
    "RootImage",
    "MountImages",
    "DynamicUser",
)


def test_agent_has_exactly_the_capabilities_it_needs() -> None:
    settings = service("rolecall-agent.service")
    assert words(settings, "CapabilityBoundingSet") == CAPABILITIES | SPAWN_CAPABILITIES
    assert words(settings, "AmbientCapabilities") == CAPABILITIES | SPAWN_CAPABILITIES


def test_the_agents_root_process_keeps_exactly_the_units_capabilities_but_the_spawning_ones() -> (
    None
):
    names = {
        "CAP_" + name.removeprefix("CAP_"): getattr(capabilities, name)
        for name in dir(capabilities)
        if name.startswith("CAP_")
    }
    kept = {name for name, number in names.items() if number in KEPT_CAPABILITIES}
    assert kept == CAPABILITIES


def test_sysusers_makes_the_agents_serving_user_by_its_default_name() -> None:
    entries = [
        line.split()
        for line in (SYSTEMD_DIR / "rolecall.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ["u", DEFAULT_USER] == entries[1][:2]


def test_agent_keeps_its_listening_sockets_and_ownership_record_across_restarts() -> None:
    settings = service("rolecall-agent.service")
    assert int(only(settings, "FileDescriptorStoreMax")) >= 4096
    # Kept on stop too, not only on restart: the namespaces it records outlive the unit.
    assert only(settings, "RuntimeDirectoryPreserve") == "yes"
    assert Path("/run", only(settings, "RuntimeDirectory")) == DEFAULT_OWNERSHIP.parent
    assert only(settings, "Restart") == "always"
    assert only(settings, "KillMode") == "mixed"


def test_agent_shares_the_hosts_mount_namespace() -> None:
    settings = service("rolecall-agent.service")
    assert [key for key in MOUNT_NAMESPACE_SETTINGS if key in settings] == []
    assert words(settings, "RestrictNamespaces") == {"net"}
    assert {"@system-service", "@mount"} <= words(settings, "SystemCallFilter")
    assert "AF_NETLINK" in words(settings, "RestrictAddressFamilies")
