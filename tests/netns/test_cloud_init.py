"""cloud-init's EC2 datasource and ec2metadata, Debian's packages, in a guest namespace: what a
real guest reads while it boots (issue 12's acceptance).

Both ways cloud-init 22.4 talks to the metadata service are run:
- IMDSv2, on a VM that cloud-init identifies as AWS: ``/sys/hypervisor/uuid`` starting with
  ``ec2``, as Xen-based EC2 instances have. The namespace test has no VM, so that file is put in
  the guest's own mount namespace (a tmpfs over ``/sys`` with the real ``/sys/class/net`` and
  ``/sys/devices`` bound back in): the identification code itself is cloud-init's, unchanged.
- IMDSv1 on a dated version, on any other VM, with ``HttpTokens`` optional.

The guest's interface has the instance's MAC address, as the hypervisor gives a VM, so
cloud-init's network configuration matches it.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from demo.guest import cloud_init_command
from tests.netns.harness import BIN, Cloud, Guest, wait_until

USER_DATA = b"#cloud-config\nhostname: web-1\nruncmd:\n  - [touch, /tmp/booted]\n\xff\x00"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJhxgwpoP9hMr57Gbs8sWtOPsKFcpsJ9hUWYrwQF8ZYZ"


def launch_booting_guest(
    cloud: Cloud, http_tokens: str, user_data: bytes = USER_DATA
) -> tuple[str, dict[str, Any], Guest]:
    """An instance launched with user data, a key pair and security groups, and its guest."""
    key_name = f"ops-{http_tokens}"
    cloud.ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=PUBLIC_KEY.encode())
    profile, _ = cloud.profile()
    instance_id = cloud.launch(
        profile,
        UserData=user_data,  # boto3 encodes it in base64 itself
        KeyName=key_name,
        SecurityGroups=["default", "web"],
        MetadataOptions={"HttpTokens": http_tokens},
    )
    described = cloud.ec2.describe_instances(InstanceIds=[instance_id])
    reservation = described["Reservations"][0]
    instance = {**reservation["Instances"][0], "ReservationId": reservation["ReservationId"]}
    mac = instance["NetworkInterfaces"][0]["MacAddress"]
    return instance_id, instance, cloud.guest(instance_id, mac=mac)


def probe(guest: Guest, as_aws: bool) -> dict[str, Any]:
    result = guest.run(cloud_init_command(as_aws), timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["found"], result.stderr[-4000:]
    return answer


def interface_of(guest: Guest, mac: str) -> str:
    listing = guest.run(["ip", "-o", "link", "show"]).stdout
    for line in listing.splitlines():
        if f"link/ether {mac}" in line:
            return line.split(":")[1].strip().split("@")[0]
    raise AssertionError(f"no interface with {mac} in the guest:\n{listing}")


@pytest.mark.parametrize(
    ("http_tokens", "as_aws"), [("required", True), ("optional", False)], ids=["v2-aws", "v1"]
)
def test_cloud_init_reads_everything_a_guest_boots_from(
    cloud: Cloud, http_tokens: str, as_aws: bool
) -> None:
    instance_id, instance, guest = launch_booting_guest(cloud, http_tokens)
    mac = instance["NetworkInterfaces"][0]["MacAddress"]
    found = probe(guest, as_aws)
    assert found["cloud_name"] == ("aws" if as_aws else "unknown")
    assert found["token_used"] is as_aws  # IMDSv2 on AWS, IMDSv1 elsewhere
    assert found["api_version"] == "2021-03-23"  # its newest: the dated versions are served
    assert found["instance_id"] == instance_id
    assert base64.b64decode(found["user_data"]) == USER_DATA
    assert found["public_keys"] == [f"{PUBLIC_KEY} ops-{http_tokens}"]
    name = interface_of(guest, mac)
    assert found["network_config"] == {
        "version": 2,
        "ethernets": {
            name: {"dhcp4": True, "dhcp6": False, "match": {"macaddress": mac}, "set-name": name}
        },
    }
    assert found["availability_zone"] == "us-east-1a"
    assert found["region"] == "us-east-1"
    assert found["local_hostname"] == instance["PrivateDnsName"].split(".")[0]
    assert {"instance-id", "local-ipv4", "mac", "network", "public-keys"} <= set(
        found["meta_data_keys"]
    )
    if as_aws:  # cloud-init reads the identity document on AWS only
        assert found["identity"]["instanceId"] == instance_id
        assert found["identity"]["privateIp"] == instance["PrivateIpAddress"]


def test_ec2metadata_reads_the_2009_version(cloud: Cloud) -> None:
    instance_id, instance, guest = launch_booting_guest(cloud, "optional")
    fields = {
        "--instance-id": instance_id,
        "--local-ipv4": instance["PrivateIpAddress"],
        "--availability-zone": "us-east-1a",
        "--ami-id": "emi-1",
        "--security-groups": "default\nweb",
    }
    for flag, expected in fields.items():
        result = guest.run(["ec2metadata", flag])
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, flag


def test_the_guest_sees_its_user_data_change(cloud: Cloud) -> None:
    instance_id, _instance, guest = launch_booting_guest(cloud, "optional")
    cloud.ec2.modify_instance_attribute(InstanceId=instance_id, UserData={"Value": b"#!/bin/sh\n"})
    wait_until(
        lambda: guest.get("/latest/user-data") == (200, "#!/bin/sh\n"),
        10,
        "the new user data to be served",
    )


def test_a_guest_reads_its_own_user_data_never_anothers(cloud: Cloud) -> None:
    """docs/security.md: user data is served only in its own instance's namespace."""
    first = cloud.launch(UserData=b"secret-of-first", MetadataOptions={"HttpTokens": "optional"})
    second = cloud.launch(UserData=b"secret-of-second", MetadataOptions={"HttpTokens": "optional"})
    for instance_id, mine, theirs in (
        (first, "secret-of-first", "secret-of-second"),
        (second, "secret-of-second", "secret-of-first"),
    ):
        guest = cloud.guest(instance_id)
        status, body = guest.get("/latest/user-data")
        assert (status, body) == (200, mine)
        for path in ("/latest/user-data", "/2009-04-04/user-data", "/latest//user-data"):
            assert theirs not in guest.get(path)[1]


def test_ec2_metadata_reads_every_field_over_imdsv2(cloud: Cloud) -> None:
    """amazon-ec2-utils' ec2-metadata: tokens, and ``/latest//meta-data/…`` for some fields."""
    instance_id, instance, guest = launch_booting_guest(cloud, "required", b"#!/bin/sh\n")
    cloud.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "Name", "Value": "web-1"}])
    cloud.ec2.modify_instance_metadata_options(
        InstanceId=instance_id, InstanceMetadataTags="enabled"
    )
    wait_until(lambda: "Name: web-1" in guest.run(["ec2-metadata", "--tags"]).stdout, 10, "tags")
    result = guest.run(["ec2-metadata", "--all"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for line in (
        "ami-id: emi-1",
        "ami-launch-index: 0",
        f"instance-id: {instance_id}",
        f"local-ipv4: {instance['PrivateIpAddress']}",
        "placement: us-east-1a",
        f"reservation-id: {instance['ReservationId']}",
        "security-groups: default",
        f"{PUBLIC_KEY} ops-required",
        "root: /dev/vda",
        "Name: web-1",
        "user-data: #!/bin/sh",
    ):
        assert line in text, (line, text)
    assert "reservation-id: not available" not in text  # asked for as /latest//meta-data/


def test_the_identity_document_a_guest_reads_verifies_with_the_published_certificate(
    cloud: Cloud, tmp_path: Path
) -> None:
    """What Vault's ec2 login or any attestor does: the guest's document and its PKCS #7
    signature, read over IMDSv2, verified by openssl against the certificate the operator
    publishes (``rolecall-controller identity-certificate``); a changed document fails."""
    instance_id, instance, guest = launch_booting_guest(cloud, "required", b"")
    status, token = guest.token()
    assert status == 200
    base = "/latest/dynamic/instance-identity/"
    status, document = guest.get(base + "document", token)
    assert status == 200 and json.loads(document)["instanceId"] == instance_id
    assert json.loads(document)["privateIp"] == instance["PrivateIpAddress"]
    certificate = subprocess.run(
        [str(BIN / "rolecall-controller"), "--state-dir", str(cloud.controller.state_dir),
         "identity-certificate"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(certificate)
    for name in ("pkcs7", "rsa2048"):
        status, signed = guest.get(base + name, token)
        assert status == 200
        (tmp_path / name).write_text(f"-----BEGIN PKCS7-----\n{signed}\n-----END PKCS7-----\n")
        for content, verified in ((document, True), (document.replace("x86_64", "arm64"), False)):
            (tmp_path / "document").write_text(content)
            result = subprocess.run(
                ["openssl", "smime", "-verify", "-in", str(tmp_path / name), "-inform", "PEM",
                 "-content", str(tmp_path / "document"), "-certfile", str(tmp_path / "cert.pem"),
                 "-noverify", "-binary"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            assert (result.returncode == 0) is verified, (name, result.stderr)
