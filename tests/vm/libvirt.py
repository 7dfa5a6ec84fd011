"""What libvirt does for RoleCall, done as libvirtd does it, for the VM tests and bench/vm.py:
the domain's XML (``libvirt/domain-example.xml`` with this VM's name, instance, MAC, bridge and
tap), and the shipped hook script (``libvirt/qemu.d/rolecall``) run with that XML on its standard
input and libvirtd's small environment, finding ``rolecall-agent`` on its PATH: a wrapper that
runs this checkout's CLI with the test agent's configuration (on a node, /etc/rolecall/agent.toml
gives the plug socket)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from demo.vmguest import Nic

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "libvirt" / "qemu.d" / "rolecall"
DOMAIN_EXAMPLE = ROOT / "libvirt" / "domain-example.xml"
METADATA_NAMESPACE = "urn:rolecall:libvirt:1"


def domain_xml(name: str, instance_id: str, nic: Nic, bridge: str) -> str:
    """libvirt/domain-example.xml for this VM: its name, the rolecall:instance element, the
    interface's MAC, bridge and tap (``<target dev>``, as in the live XML at ``started``)."""
    ElementTree.register_namespace("rolecall", METADATA_NAMESPACE)
    domain = ElementTree.parse(DOMAIN_EXAMPLE).getroot()
    domain.findall("name")[0].text = name
    element = domain.find(f"metadata/{{{METADATA_NAMESPACE}}}instance")
    assert element is not None, "the example has no rolecall:instance element"
    element.set("id", instance_id)
    element.set("mac", nic.mac)
    interface = domain.findall("devices/interface")[0]
    for tag, attribute, value in (
        ("mac", "address", nic.mac),
        ("source", "bridge", bridge),
        ("target", "dev", nic.tap),
    ):
        found = interface.find(tag)
        assert found is not None, f"the example's interface has no <{tag}>"
        found.set(attribute, value)
    return ElementTree.tostring(domain, encoding="unicode")


class Hook:
    """The shipped hook, run as libvirtd runs it, for the agent configured in `agent_config`;
    `workdir` receives the ``rolecall-agent`` wrapper."""

    def __init__(self, agent_config: Path, workdir: Path) -> None:
        wrappers = workdir / "bin"
        wrappers.mkdir(exist_ok=True)
        wrapper = wrappers / "rolecall-agent"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# rolecall-agent as installed, on this checkout's code, with the test agent's\n"
            "# configuration (where /etc/rolecall/agent.toml names the plug socket on a node).\n"
            "command=$1\n"
            "shift\n"
            f"PYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)}"
            f' -m agent.cli "$command" --config {shlex.quote(str(agent_config))} "$@"\n',
            encoding="utf-8",
        )
        wrapper.chmod(0o755)
        # libvirtd runs hooks with a small environment of its own.
        self.env = {"PATH": f"{wrappers}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

    def argv(self, name: str, operation: str, suboperation: str) -> list[str]:
        return [str(HOOK), name, operation, suboperation, "-"]

    def run(
        self, name: str, xml: str, operation: str, suboperation: str
    ) -> subprocess.CompletedProcess[str]:
        """``qemu.d/rolecall NAME OP SUBOP -`` with the XML on stdin."""
        return subprocess.run(
            self.argv(name, operation, suboperation),
            input=xml, capture_output=True, text=True, timeout=30, env=self.env,
        )  # fmt: skip
