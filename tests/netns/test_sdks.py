"""Real AWS clients inside a guest, configured by nothing but the metadata service (spec/imds.md
29): botocore's default credential chain, the aws CLI and the AWS SDK for JavaScript v3.

The region is not among what they learn from IMDS: boto3, the aws CLI (v1) and the JS SDK all
refuse to sign without one, so ``AWS_DEFAULT_REGION``/``AWS_REGION`` is set, as on EC2 for these
clients. Credentials come from IMDS alone: no AWS_* credential variable, no ~/.aws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns.harness import (
    ACCOUNT_ID,
    BIN,
    TOKEN_HEADER,
    TTL_HEADER,
    Cloud,
    Guest,
    Relay,
    imds,
    wait_until,
)

JS = Path(__file__).parent / "js"
REGION = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


@dataclass
class Served:
    guest: Guest
    relay: Relay
    expected_arn: str


def _credentials_served(namespace: str, role: str) -> bool:
    token = imds(namespace, "PUT", "/latest/api/token", {TTL_HEADER: "60"}).body
    path = f"/latest/meta-data/iam/security-credentials/{role}"
    return imds(namespace, "GET", path, {TOKEN_HEADER: token}).status == 200


@pytest.fixture(params=["required", "optional"])
def served(cloud: Cloud, request: pytest.FixtureRequest) -> Served:
    """A guest of an instance with a role, with HttpTokens required or optional, and the
    controller's public API on its loopback."""
    profile, _ = cloud.profile()
    instance_id = cloud.launch(profile)
    if request.param == "optional":
        cloud.ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")
    guest = cloud.guest(instance_id)
    unauthenticated = 200 if request.param == "optional" else 401
    wait_until(
        lambda: guest.get("/latest/meta-data/instance-id")[0] == unauthenticated,
        10,
        f"HttpTokens={request.param} to apply",
    )
    wait_until(lambda: _credentials_served(guest.name, profile), 10, "credentials")
    return Served(
        guest,
        cloud.relay(guest),
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{profile}/{instance_id}",
    )


def test_botocores_default_chain_in_a_guest_acts_as_the_instance_role(served: Served) -> None:
    script = (
        "import boto3\n"
        f"print(boto3.client('sts', endpoint_url='{served.relay.url}')"
        ".get_caller_identity()['Arn'])\n"
    )
    result = served.guest.run([str(BIN / "python"), "-c", script], env=REGION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == served.expected_arn


def test_the_aws_cli_in_a_guest_acts_as_the_instance_role(served: Served) -> None:
    result = served.guest.run(
        [str(BIN / "aws"), "sts", "get-caller-identity", "--endpoint-url", served.relay.url,
         "--query", "Arn", "--output", "text"],
        env=REGION,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == served.expected_arn


def test_the_javascript_sdk_in_a_guest_acts_as_the_instance_role(served: Served) -> None:
    if not (JS / "node_modules" / "@aws-sdk" / "client-sts").is_dir():
        pytest.fail("the JS SDK is not installed: make install (npm ci --prefix tests/netns/js)")
    result = served.guest.run(["node", str(JS / "whoami.mjs"), served.relay.url], env=REGION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == served.expected_arn
