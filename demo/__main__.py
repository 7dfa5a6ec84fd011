"""``make demo``: RoleCall on one machine, step by step, cleaning up after itself (needs root).

In a temporary directory: a controller on its embedded SQLite store and free loopback ports, an
enrolled node and its agent serving instance metadata on port 80 inside each instance's
namespace; the original design's command lines, verbatim; an instance with the instance
profile; and a guest namespace linked to the instance's (``agent/guest.py``), inside which curl,
the aws CLI and boto3 get the role's credentials from 169.254.169.254 alone. Then a real VM
(`demo.vmguest`: Debian's kernel and busybox under QEMU with TCG) on a tap on a bridge, wired by
RoleCall's libvirt hook run as libvirt runs it, reads the same; skipped, saying why, where QEMU
cannot run. Processes, namespaces, links and steering tables are removed on success, on failure,
on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from xml.etree import ElementTree

from agent import netns, steer
from agent.hook import METADATA_NAMESPACE
from agent.privileged import serving_python_environment
from demo.guest import (
    GUEST_PREFIX,
    TOKEN_HEADER,
    TOKEN_PATH,
    TTL_HEADER,
    Guest,
    Relay,
    cloud_init_command,
    delete_namespace,
    imds,
    make_guest,
    namespaces,
    serves_tokens,
    unique,
)
from demo.vmguest import (
    GuestImage,
    Nic,
    VmError,
    VmGuest,
    delete_link,
    guest_image,
    link_exists,
    qemu_problem,
)
from demo.vmimage import CACHE_DIR, GuestImageError

BIN = Path(sys.executable).parent
NODE = "demo-node"
ROLE = "s3access"
#: The original design's three lines, run verbatim through bash.
ORIGINAL_LINES = (
    "iam-rolecreate -r s3access -s ec2.amazonaws.com",
    r"iam-roleaddpolicy -r s3access -e Allow -a s3:\* -c \* -p s3star -o",
    "iam-instanceprofilecreate -s s3access -r s3access",
)
#: One more policy, so that the instance has an IAM call it may make.
READ_ROLE_LINE = r"iam-roleaddpolicy -r s3access -e Allow -a iam:GetRole -c \* -p readrole -o"
#: The guest's key pair (its private key goes to a file in the demo's directory) and user data.
KEY_LINE = "euca-create-keypair demo -t ed25519 -f {directory}/demo.pem"
USER_DATA = "#cloud-config\nhostname: demo-web\n"
RUN_LINE = (
    "euca-run-instances emi-12345678 -p s3access -k demo -g default -f {directory}/user-data.yaml"
)

IMDS = "http://169.254.169.254"
REPOSITORY = Path(__file__).resolve().parents[1]
#: RoleCall's libvirt qemu hook and domain example, as shipped.
HOOK = REPOSITORY / "libvirt" / "qemu.d" / "rolecall"
DOMAIN_EXAMPLE = REPOSITORY / "libvirt" / "domain-example.xml"
#: The demo's bridge and tap (unique names: a test run may run beside another).
VM_BRIDGE_PREFIX = "rcdb-"
VM_TAP_PREFIX = "rcdt-"
SERVE_TIMEOUT = 30.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: How long the agent may take to steer or unplug after the hook returned: the hook gives up
#: after 5 s (libvirt waits for it), the agent goes on (nft takes seconds on a busy machine).
STEER_TIMEOUT = 30.0
BOTO3_SCRIPT = """\
import sys

import boto3
from botocore.exceptions import ClientError

iam = boto3.client("iam", endpoint_url=sys.argv[1])
role = iam.get_role(RoleName="s3access")["Role"]
print("get_role(s3access):", role["Arn"])
try:
    iam.create_role(RoleName="intruder", AssumeRolePolicyDocument="{}")
except ClientError as error:
    print("create_role(intruder):", error.response["Error"]["Code"], "-",
          error.response["Error"]["Message"])
else:
    sys.exit("create_role(intruder) was allowed")
"""
_SECRETS = re.compile(r'("(?:SecretAccessKey|Token)"\s*:\s*")([^"]*)(")')


class Failed(Exception):
    """The demo cannot go on; the message is the one-line reason."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; cleaning up follows."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


# -- printing ------------------------------------------------------------------------------------


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def say(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"    {line}".rstrip(), flush=True)


def mask(secret: str) -> str:
    """The first 4 characters of a secret, then an ellipsis."""
    return f"{secret[:4]}…" if secret else secret


def mask_credentials(text: str) -> str:
    """`text` with the values of "SecretAccessKey" and "Token" masked."""
    return _SECRETS.sub(lambda m: m.group(1) + mask(m.group(2)) + m.group(3), text)


class _Signals:
    """SIGINT and SIGTERM become :class:`Interrupted`, except inside :meth:`deferred`, which
    raises it at its end: what a block starts is recorded before the interruption unwinds.

    (Not a signal mask: children would inherit it, and never see the SIGTERM that stops them.)
    """

    def __init__(self) -> None:
        self._deferring = False
        self._pending: list[int] = []

    def handle(self, signal_number: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._pending.append(signal_number)
            return
        raise Interrupted(signal_number)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending:
            raise Interrupted(self._pending[0])


SIGNALS = _Signals()


# -- daemons -------------------------------------------------------------------------------------


class Daemon:
    """A daemon in its own session (so Ctrl-C reaches only the demo, which stops it in order),
    its output written line by line to a log file by a thread."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        environment = {key: value for key, value in os.environ.items() if key[:4] != "AWS_"}
        environment["PYTHONUNBUFFERED"] = "1"
        # The agent's serving process runs as nobody, who may not reach a Python under /root.
        environment.update(serving_python_environment())
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"log {name}")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.log_path.open("a", encoding="utf-8") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, pattern: str, what: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first match of `pattern` in its output, waiting at most `timeout` seconds."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = compiled.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._closed:
                    raise Failed(f"the {self.name} exited ({self.process.wait()}) before {what}")
                if remaining <= 0:
                    raise Failed(f"the {self.name} did not report {what} within {timeout:.0f} s")
                self._changed.wait(remaining)

    def stop(self) -> int:
        """SIGTERM, a bounded wait, then SIGKILL; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=5)
        return self.process.returncode

    def tail(self, count: int = 15) -> list[str]:
        with self._changed:
            return [line.rstrip("\n") for line in self.lines[-count:]]


# -- the demo ------------------------------------------------------------------------------------


class Demo:
    """One run: what it made is recorded as it goes, so that :meth:`clean_up` removes exactly
    that, however far the run got."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.config = workdir / "controller.toml"
        self.ownership_file = workdir / "agent-namespaces.json"
        self.controller: Daemon | None = None
        self.agent: Daemon | None = None
        self.api_url = ""
        self.api_port = 0
        self.node_api_url = ""
        self.tools_env: dict[str, str] = {}
        self.launched = False
        self.instance_ids: list[str] = []
        self.guest_name = ""
        self.guest: Guest | None = None
        self.relay: Relay | None = None
        self.relay_url = ""
        self.summary: dict[str, str] = {}
        self.mac = ""
        self.private_ip = ""
        # The real VM's step: what it made, for clean_up.
        self.vm_links: list[str] = []  # the tap, then the bridge
        self.vm: VmGuest | None = None
        self.vm_plugged = False
        self.vm_domain = workdir / "domain.xml"

    # helpers

    def controller_command(self, *argv: str) -> list[str]:
        return [str(BIN / "rolecall-controller"), "--config", str(self.config), *argv]

    def check_output(self, argv: list[str], what: str) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            reason = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
            raise Failed(f"{what} failed (exit {result.returncode}): {reason[-1]}")
        return result.stdout

    def shell(self, line: str) -> str:
        """Run `line` through bash with the tools' environment; print it and its output."""
        say(f"$ {line}")
        result = subprocess.run(
            ["bash", "-c", line], env=self.tools_env, capture_output=True, text=True, timeout=60
        )
        say(result.stdout + result.stderr)
        if result.returncode != 0:
            raise Failed(f"`{line}` failed (exit {result.returncode})")
        return result.stdout

    def in_guest(
        self,
        line: str,
        env: dict[str, str] | None = None,
        show: Callable[[str], str] = str,
    ) -> str:
        """Run `line` through bash inside the guest; print it and its output (through `show`)."""
        say(f"$ {line}")
        assert self.guest is not None, "no guest yet"
        result = self.guest.run(["bash", "-c", line], env=env, timeout=60)
        say(show(result.stdout + result.stderr))
        if result.returncode != 0:
            raise Failed(f"`{line}` failed in the guest (exit {result.returncode})")
        return str(result.stdout)

    # the run

    def run(self) -> None:
        self.start_controller()
        self.start_agent()
        self.original_lines()
        self.launch()
        self.wait_served()
        self.make_guest()
        self.cloud_init()
        self.metadata_with_curl()
        self.aws_cli()
        self.boto3()
        self.real_vm()

    def start_controller(self) -> None:
        step("rolecall-controller init: a temporary state directory, SQLite store, account, key")
        self.config.write_text(f"state_dir = {json.dumps(str(self.state_dir))}\n", "utf-8")
        output = self.check_output(self.controller_command("init"), "rolecall-controller init")
        say(output.split("Start the controller:")[0])

        step("rolecall-controller serve, on free loopback ports")
        argv = self.controller_command(
            "serve", "--port", "0", "--node-api-port", "0", "--metrics-port", "0"
        )
        with SIGNALS.deferred():
            self.controller = Daemon("controller", argv, self.workdir / "controller.log")
        api = self.controller.wait_for(r"public API listening on (http://\S+)", "its public API")
        node_api = self.controller.wait_for(r"node API listening on (https://\S+)", "its node API")
        self.api_url = api.group(1)
        self.api_port = int(self.api_url.rsplit(":", 1)[1])
        say(f"public API {self.api_url}, node API {node_api.group(1)}")
        say(f"log: {self.controller.log_path}")
        self.node_api_url = node_api.group(1)
        self.tools_env = {key: value for key, value in os.environ.items() if key[:4] != "AWS_"}
        self.tools_env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            AWS_SHARED_CREDENTIALS_FILE=str(self.state_dir / "root-credentials"),
            AWS_PROFILE="rolecall",
            AWS_ENDPOINT_URL=self.api_url,
            AWS_CONFIG_FILE=os.devnull,
            AWS_DEFAULT_REGION="us-east-1",
        )

    def start_agent(self) -> None:
        step(f"rolecall-controller enroll-node {NODE}: a certificate for this machine's agent")
        node_dir = self.workdir / "node"
        output = self.check_output(
            self.controller_command("enroll-node", NODE, "--out", str(node_dir)), "enroll-node"
        )
        say(output.split("Configure the agent")[0])

        step("rolecall-agent: metadata on port 80 inside each instance's namespace")
        agent_config = self.workdir / "agent.toml"
        agent_config.write_text(
            # A real node has its own user for the serving process (systemd/rolecall.sysusers).
            'user = "nobody"\n'
            "[controller]\n"
            f"urls = [{json.dumps(self.node_api_url)}]\n"
            f"certificate = {json.dumps(str(node_dir / 'node.pem'))}\n"
            f"key = {json.dumps(str(node_dir / 'node.key'))}\n"
            f"ca_certificate = {json.dumps(str(node_dir / 'ca.pem'))}\n"
            # Its own plug socket, never a host agent's.
            f"[hypervisor]\nplug_socket = {json.dumps(str(self.workdir / 'plug.sock'))}\n",
            "utf-8",
        )
        argv = [
            str(BIN / "rolecall-agent"), "--config", str(agent_config), "--imds-port", "80",
            "--metrics-port", "0", "--ownership-file", str(self.ownership_file),
        ]  # fmt: skip
        with SIGNALS.deferred():
            self.agent = Daemon("agent", argv, self.workdir / "agent.log")
        metrics = self.agent.wait_for(r"agent metrics listening on (http://\S+)", "its metrics")
        say(f"node API {self.node_api_url}, metrics {metrics.group(1)}")
        say(f"log: {self.agent.log_path}")

    def original_lines(self) -> None:
        step("the original design's three lines, verbatim")
        say(f"$ export AWS_SHARED_CREDENTIALS_FILE={self.tools_env['AWS_SHARED_CREDENTIALS_FILE']}")
        say(f"$ export AWS_PROFILE=rolecall AWS_ENDPOINT_URL={self.api_url}")
        for line in ORIGINAL_LINES:
            output = self.shell(line)
        self.summary["profile"] = output.strip()

        step("one more inline policy, so the instance has an IAM call it may make")
        self.shell(READ_ROLE_LINE)

    def launch(self) -> None:
        step("a key pair for the guest: the private key is shown once, here written to a file")
        self.shell(KEY_LINE.format(directory=self.workdir))
        (self.workdir / "user-data.yaml").write_text(USER_DATA, "utf-8")
        step("an instance with the instance profile, the key pair and user data, on this node")
        self.launched = True
        line = RUN_LINE.format(directory=self.workdir)
        self.shell(f"cat {self.workdir}/user-data.yaml")
        output = self.shell(line)
        for row in output.splitlines():
            fields = row.split("\t")
            if fields[0] == "INSTANCE" and len(fields) > 1:
                self.instance_ids.append(fields[1])
        if not self.instance_ids:
            raise Failed(f"`{line}` printed no INSTANCE line")

    @property
    def instance_namespace(self) -> str:
        return f"rc-{self.instance_ids[0]}"

    def wait_served(self) -> None:
        namespace = self.instance_namespace
        step(f"the agent serves {self.instance_ids[0]} in namespace {namespace}")
        started = time.monotonic()
        path = f"/latest/meta-data/iam/security-credentials/{ROLE}"

        def credentials_served() -> bool:
            if not serves_tokens(namespace):
                return False
            token = imds(namespace, "PUT", TOKEN_PATH, {TTL_HEADER: "60"}).body
            return imds(namespace, "GET", path, {TOKEN_HEADER: token}).status == 200

        while not credentials_served():
            assert self.agent is not None
            if not self.agent.running:
                raise Failed(f"the agent exited ({self.agent.process.returncode})")
            if time.monotonic() - started > SERVE_TIMEOUT:
                raise Failed(
                    f"the agent did not serve {self.instance_ids[0]} with credentials in"
                    f" {namespace} within {SERVE_TIMEOUT:.0f} s"
                )
            time.sleep(0.1)
        say(
            f"169.254.169.254:80 answers in {namespace}, with the role's credentials"
            f" ({time.monotonic() - started:.1f} s after the launch)"
        )

    def make_guest(self) -> None:
        self.guest_name = unique(GUEST_PREFIX)
        step(f"a guest: namespace {self.guest_name}, a stand-in for the instance's VM")
        described = self.shell(
            f"aws ec2 describe-instances --instance-ids {self.instance_ids[0]}"
            " --query 'Reservations[0].Instances[0].NetworkInterfaces[0].[MacAddress,"
            "PrivateIpAddress]' --output text"
        ).split()
        if len(described) != 2:
            raise Failed(f"describe-instances gave no MAC and address: {described}")
        self.mac, self.private_ip = described
        self.guest = make_guest(
            self.instance_namespace, self.workdir, name=self.guest_name, mac=self.mac
        )
        self.relay = Relay(self.guest_name, self.api_port)
        self.relay_url = self.relay.url
        say(
            f"a veth pair to {self.instance_namespace}: the guest is {self.guest.address}/30"
            f" with the instance's MAC {self.mac}, as a VM has it, and its one route beyond that"
            " link goes to 169.254.169.254"
        )
        say(f"the controller's public API is relayed to the guest's {self.relay_url}")

    def cloud_init(self) -> None:
        step("inside the guest: what cloud-init's EC2 datasource (Debian's package) boots with")
        say("(cloud-init speaks IMDSv2 on a VM it identifies as AWS: here the guest's own")
        say(" /sys/hypervisor/uuid says so, in a mount namespace of its own)")
        assert self.guest is not None, "no guest yet"
        result = self.guest.run(cloud_init_command(as_aws=True), timeout=120)
        try:
            found = json.loads(result.stdout)
        except ValueError:
            found = {}
        if result.returncode != 0 or not found.get("found"):
            tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise Failed(f"cloud-init found no metadata in the guest: {tail}")
        user_data = base64.b64decode(found["user_data"]).decode("utf-8", "replace")
        say(f"instance id     {found['instance_id']} (API version {found['api_version']},"
            f" IMDSv2 token: {'yes' if found['token_used'] else 'no'})")  # fmt: skip
        say(f"user data       {user_data!r}")
        for key in found["public_keys"]:
            say(f"ssh key         {key}")
        for name, interface in found["network_config"]["ethernets"].items():
            say(f"network         {name}: DHCP, matched by MAC {interface['match']['macaddress']}")
        say(f"crawl           {found['crawl_seconds']:.2f} s")
        if user_data != USER_DATA or found["instance_id"] != self.instance_ids[0]:
            raise Failed("cloud-init read another instance's data")
        self.summary["cloud-init"] = "read its user data, key and network"

    def metadata_with_curl(self) -> None:
        step("inside the guest: curl the metadata service (IMDSv2)")
        token = self.in_guest(
            f"curl -s -X PUT -H '{TTL_HEADER}: 21600' {IMDS}/latest/api/token",
            show=mask,
        ).strip()
        if not token:
            raise Failed("the metadata service gave the guest no token")
        say("(kept as $TOKEN)")
        header = f'-H "{TOKEN_HEADER}: $TOKEN"'
        env = {"TOKEN": token}
        base = f"{IMDS}/latest/meta-data/iam"
        info = json.loads(self.in_guest(f"curl -s {header} {base}/info", env))
        if info.get("Code") != "Success" or not info.get("InstanceProfileArn"):
            raise Failed("iam/info did not name the instance profile")
        roles = self.in_guest(f"curl -s {header} {base}/security-credentials/", env)
        if roles.split() != [ROLE]:
            raise Failed(f"iam/security-credentials/ listed {roles.split()}, not [{ROLE}]")
        credentials = json.loads(
            self.in_guest(
                f"curl -s {header} {base}/security-credentials/{ROLE}", env, mask_credentials
            )
        )
        if credentials.get("Code") != "Success":
            raise Failed(f"no credentials for {ROLE}: {credentials.get('Code')}")

    def aws_cli(self) -> None:
        step("inside the guest: the aws CLI, with credentials from the metadata service alone")
        say("(the SDKs do not read the region from the metadata service: it is set)")
        output = self.in_guest(
            f"AWS_DEFAULT_REGION=us-east-1 aws sts get-caller-identity"
            f" --endpoint-url {self.relay_url}"
        )
        arn = str(json.loads(output).get("Arn", ""))
        if f"assumed-role/{ROLE}/{self.instance_ids[0]}" not in arn:
            raise Failed(f"aws sts get-caller-identity answered {arn!r}")
        self.summary["arn"] = arn

    def boto3(self) -> None:
        step("inside the guest: boto3, one call the role allows and one it denies")
        assert self.guest is not None, "no guest yet"
        (self.guest.home / "iam_calls.py").write_text(BOTO3_SCRIPT, "utf-8")
        self.in_guest("cat ~/iam_calls.py")
        output = self.in_guest(
            f"AWS_DEFAULT_REGION=us-east-1 python ~/iam_calls.py {self.relay_url}"
        )
        if "AccessDenied" not in output:
            raise Failed("create_role was not denied with AccessDenied")

    # the real VM

    def real_vm(self) -> None:
        """The same instance as a real VM: a bridge and a tap, the libvirt hook's ``started``,
        QEMU, the credentials read inside it, then ``stopped`` and ``release``."""
        problem = self._vm_problem()
        if problem is not None:
            step("a real VM: skipped, this machine cannot run one")
            say(problem)
            self.summary["vm"] = f"the real VM was skipped: {problem}"
            return
        self.drop_stand_in()
        image = self.vm_image()
        self.vm_network()
        self.vm_hook("started", "begin")
        self.show_steering()
        self.boot_vm(image)
        credentials = self.vm_metadata()
        self.vm_caller_identity(credentials)
        self.stop_vm()

    @staticmethod
    def _vm_problem() -> str | None:
        try:
            return qemu_problem()
        except VmError as error:  # no QEMU at all (`make install` installs it)
            return str(error)

    def drop_stand_in(self) -> None:
        step("the stand-in guest goes: a real VM takes its place")
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.guest_name and netns.exists(self.guest_name):
            delete_namespace(self.guest_name)
            say(f"removed the guest's namespace {self.guest_name} (and its veth pair)")

    def vm_image(self) -> GuestImage:
        step(f"a real VM's image: Debian's kernel and busybox, cached in {CACHE_DIR}")
        started = time.monotonic()
        try:
            image = guest_image(log=lambda message: say(f"({message})"))
        except GuestImageError as error:
            raise Failed(f"the VM's image could not be made: {error}") from None
        versions = ", ".join(f"{name} {version}" for name, version in image.packages.items())
        say(f"{versions}; kernel {image.kernel_kind} ({time.monotonic() - started:.1f} s)")
        return image

    def vm_network(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        bridge, tap = f"{VM_BRIDGE_PREFIX}{suffix}", f"{VM_TAP_PREFIX}{suffix}"
        step(f"the cloud's network: bridge {bridge}, and the VM's tap {tap} on it")
        say("(as libvirt makes them for <interface type='bridge'>; the tap stays on the bridge)")
        # Recorded before they exist: clean_up removes whichever were made.
        self.vm_links += [tap, bridge]
        self.shell(f"ip link add {bridge} type bridge && ip link set {bridge} up")
        self.shell(f"ip tuntap add dev {tap} mode tap && ip link set {tap} master {bridge} up")

    def _wait_steering(self, namespace: str, steered: bool) -> bool:
        """Whether `namespace`'s steering (its table and veth) is there (`steered`) or gone,
        waiting up to STEER_TIMEOUT for it; says so when the agent finished after the hook."""
        started = time.monotonic()

        def done() -> bool:
            table = namespace in self._steered()
            veth = link_exists(steer.host_end(namespace))
            return (table and veth) if steered else not (table or veth)

        while not done():
            if time.monotonic() - started > STEER_TIMEOUT:
                return False
            time.sleep(0.1)
        if time.monotonic() - started > 0.5:
            say(f"(the agent finished {time.monotonic() - started:.1f} s after the hook returned)")
        return True

    @property
    def vm_tap(self) -> str:
        return self.vm_links[0]

    def write_domain(self) -> None:
        """libvirt/domain-example.xml with this instance's id, MAC, bridge and tap."""
        ElementTree.register_namespace("rolecall", METADATA_NAMESPACE)
        domain = ElementTree.parse(DOMAIN_EXAMPLE).getroot()  # noqa: S314 - the shipped file
        instance_id = self.instance_ids[0]
        domain.set("type", "qemu")  # TCG, as booted below
        _element(domain, "name").text = instance_id
        metadata = _element(domain, f"metadata/{{{METADATA_NAMESPACE}}}instance")
        metadata.set("id", instance_id)
        metadata.set("mac", self.mac)
        interface = _element(domain, "devices/interface")
        _element(interface, "mac").set("address", self.mac)
        _element(interface, "source").set("bridge", self.vm_links[1])
        _element(interface, "target").set("dev", self.vm_tap)
        ElementTree.ElementTree(domain).write(self.vm_domain, encoding="unicode")

    def vm_hook(self, operation: str, suboperation: str) -> str:
        """RoleCall's libvirt hook, run as libvirt runs it (the domain's XML on standard input);
        its standard error (what it did)."""
        instance_id = self.instance_ids[0]
        if operation == "started":
            self.write_domain()
            step(f"libvirt's qemu hook `{operation}`: {HOOK.relative_to(REPOSITORY)}")
            say(
                f"(on standard input: {DOMAIN_EXAMPLE.relative_to(REPOSITORY)} with this instance's"
            )
            say(" id, MAC, bridge and tap. libvirt runs the hook once QEMU has started; here just")
            say(" before the boot. The demo's agent has its own plug socket: the hook's")
            say(" `rolecall-agent` is a wrapper that names it)")
        say(f"$ {HOOK.relative_to(REPOSITORY)} {instance_id} {operation} {suboperation} -"
            f" < {self.vm_domain}")  # fmt: skip
        environment = dict(os.environ)
        environment["PATH"] = f"{self._hook_bin()}{os.pathsep}{os.environ.get('PATH', '')}"
        with self.vm_domain.open("rb") as domain:
            result = subprocess.run(
                [str(HOOK), instance_id, operation, suboperation, "-"],
                stdin=domain, capture_output=True, text=True, timeout=30, env=environment,
            )  # fmt: skip
        say(result.stdout + result.stderr)
        if operation == "started":
            self.vm_plugged = True
        if result.returncode != 0:
            raise Failed(f"the hook `{operation}` exited {result.returncode}")
        return result.stderr

    def _hook_bin(self) -> Path:
        """A directory whose ``rolecall-agent`` is the real one with the demo's plug socket."""
        directory = self.workdir / "hook-bin"
        wrapper = directory / "rolecall-agent"
        if not wrapper.exists():
            directory.mkdir(exist_ok=True)
            socket = shlex.quote(str(self.workdir / "plug.sock"))
            wrapper.write_text(
                "#!/bin/sh\n# The demo's agent: its own plug socket, never a host agent's.\n"
                f"command=$1\nshift\nexec {shlex.quote(str(BIN / 'rolecall-agent'))}"
                f' "$command" --socket {socket} "$@"\n',
                "utf-8",
            )
            wrapper.chmod(0o755)
        return directory

    def show_steering(self) -> None:
        namespace = self.instance_namespace
        table = steer.table_name(namespace)
        if not self._wait_steering(namespace, steered=True):
            raise Failed(f"the hook did not steer {namespace}: no table {table}")
        say(f"169.254.169.254 and ARP for it, from {self.vm_tap}, go to {namespace} by the veth")
        say(f"{steer.host_end(namespace)} (its other end {steer.INSIDE} inside), and back:")
        self.shell(f"nft list table netdev {table}")

    def boot_vm(self, image: GuestImage) -> None:
        address = f"{self.private_ip}/16"
        step(f"the VM boots: QEMU with TCG (no KVM needed), on {self.vm_tap}, MAC {self.mac}")
        say(f"(its /init sets {address}, the instance's private address, on the NIC with that MAC)")
        vm = VmGuest(image, [Nic(self.vm_tap, mac=self.mac, address=address)])
        self.vm = vm
        try:
            vm.boot()
        except VmError as error:
            first, _, rest = str(error).partition("\n")
            say(rest)
            raise Failed(first) from None
        status, shown = vm.run("ip -o -4 addr show eth0; ip route")
        say(f"booted in {vm.boot_seconds:.1f} s; inside:")
        # ip -o ends each address with "\ valid_lft …": only what comes before.
        say("\n".join(" ".join(line.split("\\")[0].split()) for line in shown.splitlines()))
        if status != 0:
            raise Failed(f"the VM could not show its address (exit {status})")

    def _vm_imds(self, shown: str, command: str, show: Callable[[str], str] = str) -> str:
        """`command` (the guest's /bin/imds) in the VM, printed as `shown`; its body."""
        assert self.vm is not None, "no VM yet"
        say(f"$ {shown}")
        status, output = self.vm.run(command, timeout=15)
        code, _, body = output.partition("\n")
        say(f"{code}\n{show(body)}")
        if status != 0 or code != "200":
            raise Failed(f"`{shown}` in the VM answered {code or 'nothing'} (exit {status})")
        return body

    def vm_metadata(self) -> dict[str, str]:
        step("inside the VM: IMDSv2 with busybox (the guest's /bin/imds, one request with nc)")
        token = self._vm_imds("imds token 21600", "imds token 21600", mask).strip()
        say("(kept as $TOKEN)")
        base = "/latest/meta-data/iam"
        quoted = shlex.quote(token)
        info = json.loads(self._vm_imds(f"imds get {base}/info $TOKEN",
                                        f"imds get {base}/info {quoted}"))  # fmt: skip
        if info.get("Code") != "Success" or not info.get("InstanceProfileArn"):
            raise Failed("iam/info did not name the instance profile in the VM")
        path = f"{base}/security-credentials/{ROLE}"
        credentials = json.loads(
            self._vm_imds(f"imds get {path} $TOKEN", f"imds get {path} {quoted}", mask_credentials)
        )
        if credentials.get("Code") != "Success":
            raise Failed(f"no credentials for {ROLE} in the VM: {credentials.get('Code')}")
        return {str(key): str(value) for key, value in credentials.items()}

    def vm_caller_identity(self, credentials: dict[str, str]) -> None:
        step("on this host: whose credentials the VM read (STS, with them alone)")
        environment = {key: value for key, value in self.tools_env.items() if key[:4] != "AWS_"}
        environment.update(
            AWS_ACCESS_KEY_ID=credentials["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=credentials["SecretAccessKey"],
            AWS_SESSION_TOKEN=credentials["Token"],
            AWS_ENDPOINT_URL=self.api_url,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_DEFAULT_REGION="us-east-1",
        )
        say(
            f"$ AWS_ACCESS_KEY_ID={credentials['AccessKeyId']}"
            f" AWS_SECRET_ACCESS_KEY={mask(credentials['SecretAccessKey'])}"
            f" AWS_SESSION_TOKEN={mask(credentials['Token'])} aws sts get-caller-identity"
        )
        result = subprocess.run(
            ["aws", "sts", "get-caller-identity"],
            env=environment, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        say(result.stdout + result.stderr)
        if result.returncode != 0:
            raise Failed(
                f"sts get-caller-identity with the VM's credentials failed: {result.returncode}"
            )
        arn = str(json.loads(result.stdout).get("Arn", ""))
        if not arn.endswith(f":assumed-role/{ROLE}/{self.instance_ids[0]}"):
            raise Failed(f"the VM's credentials are {arn!r}, not the instance's session")
        self.summary["vm"] = (
            f"a real VM (QEMU) on tap {self.vm_tap}, wired by the libvirt hook, read them too"
        )

    def stop_vm(self) -> None:
        step("the VM stops: libvirt's hooks `stopped` and `release` unplug it")
        assert self.vm is not None, "no VM yet"
        self.vm.close()
        say(f"QEMU stopped (exit status {self.vm.process.returncode if self.vm.process else '?'})")
        self.vm_hook("stopped", "end")
        self.vm_hook("release", "end")
        self.vm_plugged = False
        namespace = self.instance_namespace
        if not self._wait_steering(namespace, steered=False):
            raise Failed(f"the steering of {namespace} is still there after `release`")
        say(f"no table {steer.table_name(namespace)}, no veth {steer.host_end(namespace)}:")
        say(f"{namespace} still serves, for the next VM of this instance")
        tap, bridge = self.vm_links
        self.shell(f"ip link del {tap} && ip link del {bridge}")

    # cleaning up

    def clean_up(self, failed: bool) -> list[str]:
        """Remove everything this run made, each step whatever happened before; problems."""
        problems: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as error:
                problems.append(f"{what}: {error}")

        step("cleaning up")
        if self.relay is not None:
            attempt("closing the relay", self.relay.close)
        if self.guest_name and netns.exists(self.guest_name):
            attempt("removing the guest", functools.partial(delete_namespace, self.guest_name))
            say(f"removed the guest's namespace {self.guest_name} (and its veth pair)")
        if self.vm is not None and self.vm.process is not None:
            attempt("stopping the VM", self._stop_vm)
        if self.vm_plugged and self.agent is not None and self.agent.running:
            attempt("the hook's release", functools.partial(self.vm_hook, "release", "end"))
        for link in self.vm_links:
            if link_exists(link):
                attempt(f"removing {link}", functools.partial(delete_link, link))
                say(f"removed {link}")
        if self.launched and self.controller is not None and self.controller.running:
            attempt("terminating the instances", self._terminate)
        for name, daemon in (("agent", self.agent), ("controller", self.controller)):
            if daemon is not None:
                attempt(
                    f"stopping the {name}", functools.partial(self._stop, name, daemon, problems)
                )
        leftovers = {f"rc-{instance_id}" for instance_id in self.instance_ids}
        leftovers.update(self._owned_namespaces())
        if self.guest_name:
            leftovers.add(self.guest_name)
        for name in sorted(leftovers & namespaces()):
            attempt(f"removing {name}", functools.partial(delete_namespace, name))
            say(f"removed namespace {name}, which was left")
        left = sorted(leftovers & namespaces())
        if left:
            problems.append(f"namespaces left: {', '.join(left)}")
        steered = {f"rc-{instance_id}" for instance_id in self.instance_ids} | leftovers
        for name in sorted(steered):  # the agent removes them; were it killed, they would stay
            if name in self._steered() or link_exists(steer.host_end(name)):
                attempt(f"removing the steering of {name}", functools.partial(steer.remove, name))
                say(f"removed the steering of {name}, which was left")
        left = sorted(
            name for name in steered
            if name in self._steered() or link_exists(steer.host_end(name))
        )  # fmt: skip
        if left:
            problems.append(f"steering left: {', '.join(left)}")
        for link in self.vm_links:
            if link_exists(link):
                problems.append(f"link left: {link}")
        if failed:
            for daemon in (self.controller, self.agent):
                if daemon is not None and daemon.lines:
                    say(f"the last lines of {daemon.log_path}:")
                    say("\n".join(f"  {line}" for line in daemon.tail()))
        return problems

    def _stop_vm(self) -> None:
        assert self.vm is not None and self.vm.process is not None
        if self.vm.running:
            self.vm.close()
            say(f"stopped the VM (QEMU, pid {self.vm.pid})")
        else:
            self.vm.close()  # reaped, its console's reader joined

    @staticmethod
    def _steered() -> list[str]:
        try:
            return steer.tables()
        except steer.SteerError:
            return []

    @staticmethod
    def _stop(name: str, daemon: Daemon, problems: list[str]) -> None:
        code = daemon.stop()
        say(f"stopped the {name} (exit status {code})")
        if code != 0:
            problems.append(f"the {name} exited with status {code} on SIGTERM")

    def _terminate(self) -> None:
        if not self.instance_ids:  # interrupted before the launch's output was read
            listing = subprocess.run(
                [str(BIN / "euca-describe-instances")],
                env=self.tools_env, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            self.instance_ids = [
                line.split("\t")[1]
                for line in listing.stdout.splitlines()
                if line.startswith("INSTANCE\t")
            ]
        if not self.instance_ids:
            return
        line = "euca-terminate-instances " + " ".join(map(shlex.quote, self.instance_ids))
        names = [f"rc-{i}" for i in self.instance_ids if netns.exists(f"rc-{i}")]
        self.shell(line)
        if self.agent is None or not self.agent.running:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(netns.exists(name) for name in names) and time.monotonic() < deadline:
            time.sleep(0.05)
        gone = [name for name in names if not netns.exists(name)]
        if gone:
            say(f"the agent removed {', '.join(gone)}")

    def _owned_namespaces(self) -> set[str]:
        """The namespaces the agent recorded as made by it (for when the controller is gone)."""
        try:
            return set(netns.OwnershipRecord(self.ownership_file).load())
        except netns.NamespaceError:
            return set()


def _element(parent: ElementTree.Element, path: str) -> ElementTree.Element:
    found = parent.find(path)
    if found is None:
        raise Failed(f"{DOMAIN_EXAMPLE.name} has no {path}")
    return found


# -- entry point ---------------------------------------------------------------------------------


def _still_cleaning(signal_number: int, frame: FrameType | None) -> None:
    print("\n(cleaning up; this takes a few seconds at most)", file=sys.stderr, flush=True)


def _preconditions() -> None:
    if os.geteuid() != 0:
        raise Failed("the demo needs root: it creates network namespaces (sudo make demo)")
    for tool in ("ip", "curl", "bash"):
        if shutil.which(tool) is None:
            raise Failed(f"the demo needs `{tool}` on PATH")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="RoleCall on this machine, step by step; removes all it made (needs root).",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (state and logs)"
    )
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    started = time.monotonic()
    previous = {
        number: signal.signal(number, SIGNALS.handle) for number in (signal.SIGINT, signal.SIGTERM)
    }
    workdir = Path(tempfile.mkdtemp(prefix="rolecall-demo-"))
    demo = Demo(workdir)
    reason = ""
    code = 0
    problems: list[str] = []
    try:
        print(f"RoleCall demo, in {workdir}", flush=True)
        _preconditions()
        demo.run()
    except Interrupted as interruption:
        code = 128 + interruption.signal_number
        reason = f"interrupted ({interruption})"
    except Failed as failure:
        code, reason = 1, str(failure)
    except Exception as error:  # a bug or a broken host: still one line, still cleaned up
        code, reason = 1, f"{type(error).__name__}: {error}"
    finally:
        for number in previous:
            signal.signal(number, _still_cleaning)
        try:
            problems = demo.clean_up(failed=code == 1)
            if args.keep:
                say(f"kept {workdir} (state and logs)")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
                say(f"removed {workdir}, with the state and the logs")
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    if problems and code == 0:
        code, reason = 1, "; ".join(problems)
    elif problems:
        reason += f" (and while cleaning up: {'; '.join(problems)})"
    seconds = time.monotonic() - started
    if code != 0:
        outcome = "stopped" if code > 128 else "failed"
        print(f"\ndemo {outcome} after {seconds:.1f} s: {reason}", file=sys.stderr, flush=True)
        return code
    step(f"done in {seconds:.1f} s")
    say(
        f"{demo.summary['profile']} gave instance {demo.instance_ids[0]} the credentials of"
        f" {demo.summary['arn']}: iam:GetRole allowed, iam:CreateRole denied"
    )
    if "vm" in demo.summary:
        say(demo.summary["vm"])
    logs = "kept" if args.keep else "removed with it; --keep keeps them"
    say(f"logs: {workdir}/controller.log and agent.log ({logs})")
    say("processes, namespaces and links: all stopped and removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
