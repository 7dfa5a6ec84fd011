"""vagrant/: the Vagrantfile parses (``ruby -c``) and, evaluated against a recording stand-in for
Vagrant, describes a PostgreSQL machine, two controllers and two compute hosts for libvirt and
VirtualBox; the
provisioning scripts pass ``bash -n`` and ``shellcheck``, and the configuration files they write
are accepted by RoleCall's own configuration parsers; the domain guest.sh writes is one
RoleCall's libvirt hook plugs. (Nothing here runs Vagrant, libvirt or the scripts' effects.)"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
from functools import cache
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import psycopg
import pytest
import yaml

from agent.config import (
    DEFAULT_CA_CERTIFICATE,
    DEFAULT_CERTIFICATE,
    DEFAULT_KEY,
    agent_config_from_string,
)
from agent.hook import HookTarget, parse_domain
from agent.steer import check_tap
from controller.config import config_from_string
from tests.pg import Cluster
from tests.unit.test_systemd_units import parse_unit

ROOT = Path(__file__).resolve().parents[2]
VAGRANT = ROOT / "vagrant"
VAGRANTFILE = VAGRANT / "Vagrantfile"
SCRIPTS = sorted((VAGRANT / "scripts").glob("*.sh"))
README = VAGRANT / "README.md"
PRIVATE_NETWORK = ip_network("192.168.56.0/24")

#: Stands in for Vagrant: records every setting, call and block of the Vagrantfile as JSON.
RECORDER = r"""
require "json"

class Recorder
  def initialize
    @set = {}
    @calls = []
    @children = {}
  end

  def to_h
    { "set" => @set, "calls" => @calls, "children" => @children.transform_values(&:to_h) }
  end

  def respond_to_missing?(_name, _include_private = false)
    true
  end

  def method_missing(name, *args, **options, &block)
    name = name.to_s
    if name.end_with?("=")
      @set[name.chomp("=")] = plain(args.first)
      return args.first
    end
    return (@children[name] ||= Recorder.new) if args.empty? && options.empty? && block.nil?

    call = { "name" => name, "args" => plain(args), "options" => plain(options) }
    if block
      child = Recorder.new
      block.call(child)
      call["block"] = child.to_h
    end
    @calls << call
    nil
  end

  private

  def plain(value)
    case value
    when Hash then value.to_h { |key, item| [key.to_s, plain(item)] }
    when Array then value.map { |item| plain(item) }
    when Symbol then value.to_s
    when String, Integer, Float, true, false, nil then value
    else value.to_s
    end
  end
end

module Vagrant
  @configurations = []

  def self.configure(version)
    raise "Vagrant.configure(#{version.inspect}): expected \"2\"" unless version == "2"

    root = Recorder.new
    yield root
    @configurations << root.to_h
  end

  def self.configurations
    @configurations
  end
end

Dir.chdir(ARGV.fetch(0))
load File.join(ARGV.fetch(0), "Vagrantfile")
puts JSON.generate({ "configurations" => Vagrant.configurations, "env" => ENV.to_h })
"""


def tool(name: str) -> str:
    executable = shutil.which(name)
    assert executable, f"{name} is missing: `make install` installs it (Debian package {name})"
    return executable


def evaluate(
    share_type: str | None = None, nested: str | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ROLECALL_", "VAGRANT_"))
    }
    if share_type is not None:
        environment["ROLECALL_SHARE_TYPE"] = share_type
    if nested is not None:
        environment["ROLECALL_NESTED"] = nested
    return subprocess.run(
        [tool("ruby"), "-e", RECORDER, str(VAGRANT)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


@cache
def recorded(share_type: str | None = None, nested: str | None = None) -> dict[str, Any]:
    result = evaluate(share_type, nested)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def configuration(share_type: str | None = None, nested: str | None = None) -> dict[str, Any]:
    configurations = recorded(share_type, nested)["configurations"]
    assert len(configurations) == 1
    return configurations[0]  # type: ignore[no-any-return]


def calls(tree: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [call for call in tree["calls"] if call["name"] == name]


def libvirt(share_type: str | None = None) -> dict[str, Any]:
    """The recorded block of ``config.vm.provider "libvirt"``."""
    providers = calls(configuration(share_type)["children"]["vm"], "provider")
    (block,) = [call["block"] for call in providers if call["args"] == ["libvirt"]]
    return block  # type: ignore[no-any-return]


def machines(nested: str | None = None) -> dict[str, dict[str, Any]]:
    """Each defined machine's recorded block, by name."""
    defined = calls(configuration(nested=nested)["children"]["vm"], "define")
    return {call["args"][0]: call for call in defined}


def vm(machine: dict[str, Any]) -> dict[str, Any]:
    return machine["block"]["children"]["vm"]  # type: ignore[no-any-return]


def provisioners(machine: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {call["args"][0]: call["options"] for call in calls(vm(machine), "provision")}


def address(machine: dict[str, Any]) -> str:
    (network,) = calls(vm(machine), "network")
    assert network["args"] == ["private_network"]
    return network["options"]["ip"]  # type: ignore[no-any-return]


def heredoc(script: Path, delimiter: str, values: dict[str, str]) -> str:
    """The here-document ``delimiter`` of ``script`` with its ``${NAME}`` expansions done."""
    lines = script.read_text(encoding="utf-8").splitlines()
    start = next(n for n, line in enumerate(lines) if line.rstrip().endswith(f"<<{delimiter}"))
    text = "\n".join(lines[start + 1 : lines.index(delimiter, start + 1)]) + "\n"
    names = set(re.findall(r"\$\{(\w+)\}", text))
    assert names <= set(values), f"{delimiter} expands unknown {sorted(names - set(values))}"
    assert "$" not in re.sub(r"\$\{\w+\}", "", text), f"{delimiter}: an expansion not as ${{NAME}}"
    return re.sub(r"\$\{(\w+)\}", lambda match: values[match.group(1)], text)


def test_ruby_parses_the_vagrantfile() -> None:
    result = subprocess.run(
        [tool("ruby"), "-c", VAGRANTFILE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stdout


def test_there_are_provisioning_scripts() -> None:
    assert {script.name for script in SCRIPTS} == {
        "common.sh",
        "controller.sh",
        "compute.sh",
        "guest.sh",
        "postgresql.sh",
        "rcc.sh",
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
def test_bash_parses_the_script(script: Path) -> None:
    result = subprocess.run(
        [tool("bash"), "-n", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
def test_shellcheck_finds_nothing_in_the_script(script: Path) -> None:
    result = subprocess.run(
        [tool("shellcheck"), "--shell=bash", "--severity=style", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_would_notice_a_defect(tmp_path: Path) -> None:
    """The check above can fail: an unquoted expansion is reported."""
    script = tmp_path / "unquoted.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\nrm -rf $1/cache\n")
    result = subprocess.run(
        [tool("shellcheck"), "--shell=bash", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "SC2086" in result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
def test_each_script_is_bash_that_stops_at_the_first_error(script: Path) -> None:
    lines = script.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines


MACHINES = ["db", "controller1", "controller2", "compute1", "compute2"]
CONTROLLERS = ("controller1", "controller2")


def test_the_vagrantfile_defines_a_database_two_controllers_and_two_compute_hosts() -> None:
    """In this order, which is the order they come up in: each needs what the one before put in
    the shared folder."""
    defined = machines()
    assert list(defined) == MACHINES
    assert [name for name, machine in defined.items() if machine["options"].get("primary")] == [
        "controller1"
    ]
    for name, machine in defined.items():
        assert vm(machine)["set"]["hostname"] == name


def test_the_machines_have_distinct_addresses_on_one_private_network() -> None:
    addresses = [address(machine) for machine in machines().values()]
    assert len(set(addresses)) == len(MACHINES)
    for value in addresses:
        assert ip_address(value) in PRIVATE_NETWORK
        assert ip_address(value).is_private


def test_the_vagrantfile_configures_libvirt_and_virtualbox() -> None:
    providers = {
        call["args"][0]: call for call in calls(configuration()["children"]["vm"], "provider")
    }
    assert set(providers) == {"libvirt", "virtualbox"}
    for provider in providers.values():
        assert provider["block"]["set"]["memory"] >= 1024


def test_the_project_is_synced_to_vagrant_and_a_shared_folder_both_ways() -> None:
    folders = {
        call["args"][1]: call for call in calls(configuration()["children"]["vm"], "synced_folder")
    }
    project = folders["/vagrant"]
    assert project["args"][0] == ".."
    assert project["options"]["type"] == "rsync"
    assert {".venv/", ".git/", "vagrant/shared/"} <= set(project["options"]["rsync__exclude"])
    shared = folders["/rolecall-shared"]
    assert shared["args"][0] == "shared"
    assert shared["options"]["type"] == "nfs"
    assert (VAGRANT / ".gitignore").read_text(encoding="utf-8").count("shared/") == 1


def test_virtiofs_asks_libvirt_for_shared_memory() -> None:
    backing = [call["args"] for call in calls(libvirt("virtiofs"), "memorybacking")]
    assert ["access"] in backing and ["source"] in backing
    vm_tree = configuration("virtiofs")["children"]["vm"]
    folders = {call["args"][1]: call for call in calls(vm_tree, "synced_folder")}
    assert folders["/rolecall-shared"]["options"]["type"] == "virtiofs"
    assert not calls(libvirt(), "memorybacking"), "shared memory only for virtiofs"


def test_an_unknown_share_type_stops_vagrant_with_a_message() -> None:
    result = evaluate("smb")
    assert result.returncode != 0
    assert "ROLECALL_SHARE_TYPE must be one of nfs, virtualbox, virtiofs" in result.stderr


def test_the_machines_come_up_one_after_the_other() -> None:
    assert recorded()["env"]["VAGRANT_NO_PARALLEL"] == "yes"


def test_each_machine_is_provisioned_by_scripts_that_exist() -> None:
    expected = {
        "db": ["common", "postgresql"],
        "controller1": ["common", "controller"],
        "controller2": ["common", "controller"],
        "compute1": ["common", "compute"],
        "compute2": ["common", "compute"],
    }
    for name, machine in machines().items():
        steps = provisioners(machine)
        assert list(steps) == expected[name]
        for step in steps.values():
            assert step["type"] == "shell"
            assert (VAGRANT / step["path"]).is_file(), step["path"]


def test_the_provisioning_arguments_name_the_hosts_the_database_and_the_controllers() -> None:
    defined = machines()
    hosts = [f"{name}={address(machine)}" for name, machine in defined.items()]
    database = address(defined["db"])
    controllers = [address(defined[name]) for name in CONTROLLERS]
    for machine in defined.values():
        assert provisioners(machine)["common"]["args"] == hosts
    assert provisioners(defined["db"])["postgresql"]["args"] == [
        database,
        *(f"{name}={address(defined[name])}" for name in CONTROLLERS),
    ]
    # The first controller enrolls the compute hosts; the second only joins.
    assert provisioners(defined["controller1"])["controller"]["args"] == [
        controllers[0],
        database,
        "compute1",
        "compute2",
    ]
    assert provisioners(defined["controller2"])["controller"]["args"] == [controllers[1], database]
    for name in ("compute1", "compute2"):
        steps = provisioners(defined[name])
        assert steps["compute"]["args"] == [name, address(defined[name]), *controllers]


def test_the_scripts_install_files_the_project_has() -> None:
    for script in SCRIPTS:
        for relative in re.findall(r'"\$SOURCE/([^"$]+)"', script.read_text(encoding="utf-8")):
            assert (ROOT / relative).exists(), f"{script.name} installs {relative}: missing"


def test_the_units_and_the_controllers_user_are_installed() -> None:
    common = (VAGRANT / "scripts" / "common.sh").read_text(encoding="utf-8")
    for unit in ("rolecall-controller.service", "rolecall-agent.service"):
        assert f"$SOURCE/systemd/{unit}" in common
        assert "/opt/rolecall/venv/bin/" in (ROOT / "systemd" / unit).read_text(encoding="utf-8")
    assert "systemd-sysusers /usr/lib/sysusers.d/rolecall.conf" in common
    assert "VENV=/opt/rolecall/venv" in common


def test_the_controller_configuration_listens_on_every_address_and_stores_in_postgresql() -> None:
    database = address(machines()["db"])
    text = heredoc(
        VAGRANT / "scripts" / "controller.sh",
        "CONTROLLER_TOML",
        {"STATE": "/var/lib/rolecall", "database": database},
    )
    config = config_from_string(text, "controller.toml")
    every_address = "0.0.0.0"  # noqa: S104 - the example's machines are reached from the others
    assert (config.api_host, config.node_api_host, config.metrics_host) == (every_address,) * 3
    assert config.state_dir == Path("/var/lib/rolecall")
    assert config.store_backend == "postgresql"
    assert config.store_dsn is not None
    dsn = dict(item.split("=", 1) for item in config.store_dsn.split())
    assert dsn["host"] == database
    assert (dsn["dbname"], dsn["user"]) == ("rolecall", "rolecall")
    assert dsn["sslmode"] == "require"
    assert "password" not in dsn, "the password is in /etc/rolecall/pgpass, never in the DSN"


def test_the_controller_is_initialised_and_nodes_enrolled_as_the_services_user() -> None:
    """With the password file handed over as the unit's drop-in does (a credential of a
    transient service), so that the password is in no command line and no environment."""
    script = (VAGRANT / "scripts" / "controller.sh").read_text(encoding="utf-8")
    assert 'install -m 0755 "$SOURCE/vagrant/scripts/rcc.sh" "$RCC"' in script
    assert '"$RCC" init --node-api-name "$address"' in script
    assert '"$RCC" enroll-node "$node" --out' in script
    assert "runuser" not in script, "runuser would give the command no database password"
    rcc = (VAGRANT / "scripts" / "rcc.sh").read_text(encoding="utf-8")
    drop_in = parse_unit(ROOT / "systemd" / "rolecall-controller-postgresql.conf")["Service"]
    (credential,) = drop_in["LoadCredential"]
    name, source = credential.split(":")
    assert "systemd-run --quiet --wait --pipe --collect --uid=rolecall" in rcc
    assert f"readonly PGPASS={source}" in rcc
    assert f'--property=LoadCredential={name}:"$PGPASS"' in rcc
    assert f"'PGPASSFILE=${{CREDENTIALS_DIRECTORY}}/{name}'" in rcc


def test_the_controllers_install_the_postgresql_drop_in_and_a_root_only_password_file() -> None:
    script = (VAGRANT / "scripts" / "controller.sh").read_text(encoding="utf-8")
    drop_in = "/etc/systemd/system/rolecall-controller.service.d/postgresql.conf"
    assert f"readonly DROP_IN={drop_in}" in script
    assert '"$SOURCE/systemd/rolecall-controller-postgresql.conf" "$DROP_IN"' in script
    assert 'install -m 0600 -o root -g root "$pgpass" "$CONFIG/pgpass"' in script
    assert script.index("systemctl daemon-reload") < script.index('"$RCC" init')


def compute_urls(*controllers: str) -> str:
    """What compute.sh's loop makes of its controller addresses, run with bash."""
    lines = COMPUTE.read_text(encoding="utf-8").splitlines()
    start = lines.index('urls=""')
    loop = "\n".join(lines[start : lines.index("done", start) + 1])
    result = subprocess.run(
        [tool("bash"), "-euc", f'{loop}\nprintf %s "$urls"', "compute.sh", *controllers],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_agent_configuration_names_both_controllers_and_the_node_files() -> None:
    defined = machines()
    controllers = [address(defined[name]) for name in CONTROLLERS]
    compute_address = address(defined["compute1"])
    text = heredoc(
        VAGRANT / "scripts" / "compute.sh",
        "AGENT_TOML",
        {"urls": compute_urls(*controllers), "address": compute_address, "CONFIG": "/etc/rolecall"},
    )
    config = agent_config_from_string(text, "agent.toml")
    assert config.controller_urls == tuple(f"https://{each}:8775" for each in controllers)
    assert (config.certificate, config.key, config.ca_certificate) == (
        DEFAULT_CERTIFICATE,
        DEFAULT_KEY,
        DEFAULT_CA_CERTIFICATE,
    )
    assert (config.metrics_host, config.metrics_port) == (compute_address, 9774)


def test_prometheus_scrapes_the_machines_of_the_vagrantfile() -> None:
    scrape = yaml.safe_load((ROOT / "docs" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"] for job in scrape["scrape_configs"]}
    defined = machines()
    assert [t for group in jobs["rolecall-controller"] for t in group["targets"]] == [
        f"{address(defined[name])}:9773" for name in CONTROLLERS
    ]
    agents = {group["labels"]["node"]: group["targets"] for group in jobs["rolecall-agent"]}
    assert agents == {name: [f"{address(defined[name])}:9774"] for name in ("compute1", "compute2")}


def test_the_readme_walks_through_the_original_example() -> None:
    text = README.read_text(encoding="utf-8")
    for line in (
        "iam-rolecreate -r s3access -s ec2.amazonaws.com",
        r"iam-roleaddpolicy -r s3access -e Allow -a s3:\* -c \* -p s3star -o",
        "iam-instanceprofilecreate -s s3access -r s3access",
        "euca-run-instances emi-12345678 -p s3access",
        "X-aws-ec2-metadata-token-ttl-seconds",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/s3access",
    ):
        assert line in text, line


# -- libvirt and a real guest on the compute hosts -----------------------------------------------

COMPUTE = VAGRANT / "scripts" / "compute.sh"
GUEST = VAGRANT / "scripts" / "guest.sh"
INSTANCE = "i-d3983fbe4c67ce517"
MAC = "d2:4f:9a:10:77:c3"
#: The kernel's command line is at most this long on x86 (COMMAND_LINE_SIZE).
COMMAND_LINE_SIZE = 2048


def provider_block(machine: dict[str, Any], name: str) -> dict[str, Any]:
    (block,) = [call["block"] for call in calls(vm(machine), "provider") if call["args"] == [name]]
    return block  # type: ignore[no-any-return]


@pytest.mark.parametrize(("nested", "on"), [(None, True), ("yes", True), ("no", False)])
def test_the_compute_hosts_ask_for_nested_virtualization_unless_told_not_to(
    nested: str | None, on: bool
) -> None:
    defined = machines(nested)
    for name in ("compute1", "compute2"):
        assert provider_block(defined[name], "libvirt")["set"]["nested"] is on
        (customize,) = calls(provider_block(defined[name], "virtualbox"), "customize")
        assert customize["args"] == [["modifyvm", "id", "--nested-hw-virt", "on" if on else "off"]]
    for name in ("db", *CONTROLLERS):
        assert not calls(vm(defined[name]), "provider"), f"{name} runs no guests"


def test_an_unknown_nested_value_stops_vagrant_with_a_message() -> None:
    result = evaluate(nested="maybe")
    assert result.returncode != 0
    assert "ROLECALL_NESTED must be yes or no" in result.stderr


def _apt_lines(script: str) -> str:
    """The script's apt-get install commands, continuation lines joined."""
    joined = script.replace("\\\n", " ")
    return "\n".join(line for line in joined.splitlines() if "apt-get install" in line)


def test_the_compute_hosts_install_libvirt_qemu_and_nftables_without_recommends() -> None:
    installs = _apt_lines(COMPUTE.read_text(encoding="utf-8"))
    for package in ("libvirt-daemon-system", "qemu-system-x86", "nftables"):
        line = next((line for line in installs.splitlines() if package in line.split()), "")
        assert "--no-install-recommends" in line, f"{package}: {installs}"


def test_the_hook_is_installed_where_libvirt_looks_and_libvirtd_restarted_after() -> None:
    script = COMPUTE.read_text(encoding="utf-8")
    install = '"$SOURCE/libvirt/qemu.d/rolecall" /etc/libvirt/hooks/qemu.d/rolecall'
    assert f"install -D -m 0755 {install}" in script
    assert script.index(install) < script.index("systemctl restart libvirtd.service")
    # After the agent: the hook of a domain started at once finds its socket.
    assert script.index("systemctl restart rolecall-agent") < script.index(install)


def test_the_guests_bridge_is_a_libvirt_network_with_the_bridge_guest_sh_uses() -> None:
    text = heredoc(COMPUTE, "NETWORK_XML", {"NETWORK": "rolecall-guests", "BRIDGE": "rcbr0"})
    network = ElementTree.fromstring(text)
    bridge = network.find("bridge")
    assert bridge is not None and bridge.get("name") == "rcbr0"
    assert network.find("ip") is None and network.find("forward") is None, "no addresses, no NAT"
    assert "readonly BRIDGE=rcbr0" in COMPUTE.read_text(encoding="utf-8")
    assert "BRIDGE=${ROLECALL_BRIDGE:-rcbr0}" in GUEST.read_text(encoding="utf-8")


def test_the_compute_hosts_build_the_guest_and_install_guest_sh() -> None:
    script = COMPUTE.read_text(encoding="utf-8")
    assert '(cd "$SOURCE" && python3 -m demo.vmguest fetch)' in script
    assert 'install -m 0755 "$SOURCE/vagrant/scripts/guest.sh" /usr/local/sbin/rolecall-guest' in (
        script
    )


def boot_script() -> str:
    lines = GUEST.read_text(encoding="utf-8").splitlines()
    start = next(n for n, line in enumerate(lines) if line.endswith("<<'BOOT_SCRIPT'"))
    return "\n".join(lines[start + 1 : lines.index("BOOT_SCRIPT", start)]) + "\n"


def guest_domain(kind: str) -> str:
    """The domain XML guest.sh writes for INSTANCE, with the values it computes."""
    script = base64.b64encode(boot_script().encode()).decode()
    cpu = {"kvm": "<cpu mode='host-passthrough'/>", "qemu": "<cpu mode='maximum'/>"}[kind]
    assert f'{kind}) cpu="{cpu}" ;;' in GUEST.read_text(encoding="utf-8")
    return heredoc(
        GUEST,
        "DOMAIN_XML",
        {
            "type": kind,
            "instance": INSTANCE,
            "mac": MAC,
            "address": "169.254.1.213",
            "kernel": "/var/cache/rolecall/vm-guest/parts-0123456789abcdef/kernel",
            "initrd": "/var/cache/rolecall/vm-guest/image-0123456789abcdef/initrd.gz",
            "boot_script": script,
            "cpu": cpu,
            "BRIDGE": "rcbr0",
            "tap": f"tap{INSTANCE[2:13]}",
            "console_log": f"/var/log/libvirt/qemu/{INSTANCE}-console.log",
        },
    )


@pytest.mark.parametrize("kind", ["kvm", "qemu"])
def test_the_domain_guest_sh_writes_is_one_the_hook_plugs(kind: str) -> None:
    text = guest_domain(kind)
    domain = ElementTree.fromstring(text)
    assert domain.get("type") == kind
    assert domain.findtext("name") == INSTANCE
    # What RoleCall's hook reads from it (libvirt hands it the same XML, with the tap named).
    tap = f"tap{INSTANCE[2:13]}"
    assert parse_domain(text, INSTANCE) == HookTarget(INSTANCE, tap)
    assert check_tap(tap) == tap and len(tap) <= 15
    (interface,) = domain.findall("devices/interface")
    assert interface.get("type") == "bridge"
    source, model = interface.find("source"), interface.find("model")
    assert source is not None and source.get("bridge") == "rcbr0"
    assert model is not None and model.get("type") == "virtio"
    # Kernel and initramfs booted directly, the guest set up from the command line.
    assert domain.findtext("os/kernel", "").endswith("/kernel")
    assert domain.findtext("os/initrd", "").endswith("/initrd.gz")
    command_line = domain.findtext("os/cmdline", "")
    assert len(command_line.encode()) < COMMAND_LINE_SIZE
    words = command_line.split()
    assert "console=ttyS0" in words and "rolecall.console=shell" in words
    assert f"rolecall.nic={MAC},169.254.1.213/16" in words
    assert f"rolecall.hostname={INSTANCE}" in words
    (run,) = [word for word in words if word.startswith("rolecall.run=")]
    assert base64.b64decode(run.split("=", 1)[1]).decode() == boot_script()
    serial = domain.find("devices/serial/log")
    assert (
        serial is not None and serial.get("file") == f"/var/log/libvirt/qemu/{INSTANCE}-console.log"
    )


def test_the_guests_boot_script_is_posix_sh_that_shellcheck_accepts(tmp_path: Path) -> None:
    script = tmp_path / "boot.sh"
    script.write_text(boot_script())
    checks: list[list[str]] = [
        ["sh", "-n", str(script)],
        [tool("shellcheck"), "--shell=sh", "--severity=style", str(script)],
    ]
    for argv in checks:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "usage:"),
        (["vm-1", MAC, "169.254.1.213"], "INSTANCE must be an instance id"),
        ([INSTANCE, "d2:4f:9a:10:77", "169.254.1.213"], "MAC must be a MAC address"),
        ([INSTANCE, MAC, "169.254.1"], "ADDRESS must be an IPv4 address"),
        ([INSTANCE, MAC, "169.254.1.213; reboot"], "ADDRESS must be an IPv4 address"),
    ],
)
def test_guest_sh_refuses_bad_arguments_naming_them(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [tool("bash"), GUEST, *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_the_readme_boots_a_vm_for_the_instance_and_stops_it() -> None:
    text = README.read_text(encoding="utf-8")
    for line in (
        "aws ec2 describe-instances --instance-ids",
        "NetworkInterfaces[0].MacAddress",
        "sudo rolecall-guest i-d3983fbe4c67ce517 d2:4f:9a:10:77:c3 169.254.1.213",
        "sudo virsh console i-d3983fbe4c67ce517",
        "sudo virsh destroy i-d3983fbe4c67ce517",
        "euca-terminate-instances i-d3983fbe4c67ce517",
    ):
        assert line in text, line


# -- the database machine ----------------------------------------------------------------------

POSTGRESQL = VAGRANT / "scripts" / "postgresql.sh"


def test_the_database_listens_on_its_private_address_and_keeps_commits_durable() -> None:
    database = address(machines()["db"])
    text = heredoc(POSTGRESQL, "POSTGRESQL_CONF", {"address": database, "PORT": "5432"})
    settings = dict(
        (key.strip(), value.strip())
        for key, _, value in (
            line.partition("=") for line in text.splitlines() if line and line[0] != "#"
        )
    )
    assert settings["listen_addresses"] == f"'localhost,{database}'"
    assert settings["synchronous_commit"] == "on"
    assert settings["password_encryption"] == "'scram-sha-256'"


def test_only_the_controllers_may_connect_with_a_password_over_tls() -> None:
    """pg_hba.conf's lines, as the script makes them from its arguments (run with bash)."""
    lines = POSTGRESQL.read_text(encoding="utf-8").splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("{"))
    block = "\n".join(lines[start : lines.index('} >>"$hba"') + 1]).replace('>>"$hba"', "")
    defined = machines()
    controllers = [f"{name}={address(defined[name])}" for name in CONTROLLERS]
    result = subprocess.run(
        [tool("bash"), "-euc", f"DATABASE=rolecall ROLE=rolecall\n{block}", "sh", *controllers],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rules = [line.split() for line in result.stdout.splitlines() if not line.startswith("#")]
    assert rules == [
        ["hostssl", "rolecall", "rolecall", f"{address(defined[name])}/32", "scram-sha-256"]
        for name in CONTROLLERS
    ]


def test_the_database_role_has_only_the_rights_it_needs(pg_cluster: Cluster) -> None:
    """postgresql.sh's SQL, run twice with psql against a real PostgreSQL (under names of the
    test's own): the role logs in with its password, owns its database and may create tables
    there, and may do nothing else; no other role may connect to that database."""
    suffix = secrets.token_hex(4)
    role, database, password = f"rc_role_{suffix}", f"rc_db_{suffix}", secrets.token_hex(16)
    sql = heredoc(
        POSTGRESQL, "SQL", {"ROLE": role, "DATABASE": database, "password": password}
    ).replace("\\\\", "\\")
    superuser = pg_cluster.dsn(user="postgres")
    psql = str(pg_cluster.bin_dir / "psql")
    passfile = pg_cluster.directory / f"pgpass-{suffix}"
    try:
        for _ in range(2):
            done = subprocess.run(
                [psql, "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", superuser],
                input=sql,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        passfile.write_text(f"*:*:{database}:{role}:{password}\n")
        passfile.chmod(0o600)
        own = f"host=127.0.0.1 port={pg_cluster.primary.port} dbname={database} user={role}"
        with psycopg.connect(f"{own} passfile={passfile}", autocommit=True) as connection:
            connection.execute("CREATE TABLE probe (id integer)")
            assert connection.execute("SHOW statement_timeout").fetchone() == ("30s",)
            assert connection.execute("SHOW idle_in_transaction_session_timeout").fetchone() == (
                "15s",
            )
            for forbidden in (f"CREATE DATABASE {database}_x", f"CREATE ROLE {role}_x"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    connection.execute(forbidden.encode())
            flags = connection.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication FROM pg_roles"
                " WHERE rolname = current_user"
            ).fetchone()
            assert flags == (False, False, False, False)
        # Another ordinary role of the same server may not even connect.
        other = pg_cluster.dsn(dbname=database)
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(other, connect_timeout=10).close()
    finally:
        with psycopg.connect(superuser, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)".encode())
            connection.execute(f"DROP ROLE IF EXISTS {role}".encode())
        passfile.unlink(missing_ok=True)
