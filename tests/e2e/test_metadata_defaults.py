"""An account's instance metadata defaults (EC2 Modify/GetInstanceMetadataDefaults) through boto3
and the aws CLI against a real controller, and the options RunInstances launches with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Controller
from tests.e2e.test_aws_cli import aws, aws_json
from tests.e2e.test_ec2 import add_node, ec2_user, error_of

NO_PREFERENCE = {
    "HttpTokens": "no-preference",
    "HttpPutResponseHopLimit": -1,
    "HttpEndpoint": "no-preference",
    "InstanceMetadataTags": "no-preference",
}


@pytest.fixture(scope="module")
def node(controller: Controller) -> str:
    add_node(controller.state_dir, "defaults-node")
    return "defaults-node"


@pytest.fixture
def ec2(controller: Controller, node: str) -> Iterator[Any]:
    """The account's EC2 client; the account has no defaults before and after each test, and
    the instances the test launched (`launched`) are terminated."""
    client = controller.client("ec2")
    client.modify_instance_metadata_defaults(**NO_PREFERENCE)
    launched.clear()
    try:
        yield client
    finally:
        client.modify_instance_metadata_defaults(**NO_PREFERENCE)
        if launched:
            client.terminate_instances(InstanceIds=list(launched))


launched: list[str] = []


def launch(ec2: Any, **extra: Any) -> dict[str, Any]:
    """The MetadataOptions of a new instance, as DescribeInstances shows them."""
    instance = ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1, **extra)["Instances"][0]
    launched.append(instance["InstanceId"])
    return options_of(ec2, instance["InstanceId"])


def options_of(ec2: Any, instance_id: str) -> dict[str, Any]:
    described = ec2.describe_instances(InstanceIds=[instance_id])
    options: dict[str, Any] = described["Reservations"][0]["Instances"][0]["MetadataOptions"]
    return options


def account_level(ec2: Any) -> dict[str, Any]:
    level: dict[str, Any] = ec2.get_instance_metadata_defaults()["AccountLevel"]
    return level


def test_without_defaults_instances_require_imdsv2_and_get_shows_no_preference(ec2: Any) -> None:
    assert account_level(ec2) == {"ManagedBy": "account"}
    options = launch(ec2)
    assert options["HttpTokens"] == "required"
    assert options["HttpPutResponseHopLimit"] == 1
    assert options["HttpEndpoint"] == "enabled"
    assert options["InstanceMetadataTags"] == "disabled"


def test_an_account_choosing_optional_launches_optional_until_no_preference(ec2: Any) -> None:
    assert ec2.modify_instance_metadata_defaults(HttpTokens="optional")["Return"] is True
    assert account_level(ec2) == {"HttpTokens": "optional", "ManagedBy": "account"}
    first = ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1)["Instances"][0]
    launched.append(first["InstanceId"])
    assert options_of(ec2, first["InstanceId"])["HttpTokens"] == "optional"
    ec2.modify_instance_metadata_defaults(HttpTokens="no-preference")
    assert account_level(ec2) == {"ManagedBy": "account"}
    assert launch(ec2)["HttpTokens"] == "required"
    # An instance launched before keeps what it was launched with, as in EC2.
    assert options_of(ec2, first["InstanceId"])["HttpTokens"] == "optional"


def test_hop_limit_endpoint_and_tags_defaults_apply_and_minus_one_clears(ec2: Any) -> None:
    ec2.modify_instance_metadata_defaults(HttpPutResponseHopLimit=3, InstanceMetadataTags="enabled")
    ec2.modify_instance_metadata_defaults(HttpEndpoint="disabled")  # the others are kept
    assert account_level(ec2) == {
        "HttpPutResponseHopLimit": 3,
        "HttpEndpoint": "disabled",
        "InstanceMetadataTags": "enabled",
        "ManagedBy": "account",
    }
    options = launch(ec2)
    assert (options["HttpPutResponseHopLimit"], options["InstanceMetadataTags"]) == (3, "enabled")
    assert options["HttpEndpoint"] == "disabled"
    assert options["HttpTokens"] == "required"
    ec2.modify_instance_metadata_defaults(HttpPutResponseHopLimit=-1)
    assert launch(ec2)["HttpPutResponseHopLimit"] == 1


def test_the_requests_metadata_options_win_over_the_accounts_defaults(ec2: Any) -> None:
    ec2.modify_instance_metadata_defaults(
        HttpTokens="optional", HttpPutResponseHopLimit=5, InstanceMetadataTags="enabled"
    )
    options = launch(ec2, MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2})
    assert options["HttpTokens"] == "required"
    assert options["HttpPutResponseHopLimit"] == 2
    assert options["InstanceMetadataTags"] == "enabled"  # not in the request: the default's


@pytest.mark.parametrize(
    ("arguments", "code", "text"),
    [
        ({"HttpPutResponseHopLimit": 0}, "InvalidParameterValue", "HttpPutResponseHopLimit"),
        ({"HttpPutResponseHopLimit": 65}, "InvalidParameterValue", "HttpPutResponseHopLimit"),
        ({"HttpTokens": "sometimes"}, "InvalidParameterValue", "HttpTokens"),
        ({"HttpTokensEnforced": "enabled"}, "UnsupportedOperation", "HttpTokensEnforced"),
    ],
)
def test_bad_values_are_refused_and_change_nothing(
    ec2: Any, arguments: dict[str, Any], code: str, text: str
) -> None:
    ec2.modify_instance_metadata_defaults(HttpTokens="optional")
    found_code, status, message = error_of(
        ec2.modify_instance_metadata_defaults, HttpEndpoint="disabled", **arguments
    )
    assert (found_code, status) == (code, 400)
    assert text in message
    assert account_level(ec2) == {"HttpTokens": "optional", "ManagedBy": "account"}


def test_changing_the_defaults_is_authorized_and_dry_run_says_so(
    controller: Controller, ec2: Any
) -> None:
    from controller.iam.common import new_id

    iam = controller.client("iam")
    denied = ec2_user(
        controller,
        iam,
        f"md-{new_id('')[:8].lower()}",
        {"Effect": "Deny", "Action": "ec2:ModifyInstanceMetadataDefaults", "Resource": "*"},
    )
    code, status, _ = error_of(denied.modify_instance_metadata_defaults, HttpTokens="optional")
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert denied.get_instance_metadata_defaults()["AccountLevel"] == {"ManagedBy": "account"}
    code, _, _ = error_of(ec2.modify_instance_metadata_defaults, HttpTokens="optional", DryRun=True)
    assert code == "DryRunOperation"
    assert account_level(ec2) == {"ManagedBy": "account"}


def test_the_aws_cli_sets_and_reads_the_defaults(controller: Controller, ec2: Any) -> None:
    answer = aws_json(
        controller,
        "ec2",
        "modify-instance-metadata-defaults",
        "--http-tokens",
        "optional",
        "--http-put-response-hop-limit",
        "2",
    )
    assert answer == {"Return": True}
    assert aws_json(controller, "ec2", "get-instance-metadata-defaults") == {
        "AccountLevel": {
            "HttpTokens": "optional",
            "HttpPutResponseHopLimit": 2,
            "ManagedBy": "account",
        }
    }
    refused = aws(
        controller, "ec2", "modify-instance-metadata-defaults", "--http-put-response-hop-limit",
        "0", check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "InvalidParameterValue" in refused.stderr
