"""EC2 instances with instance profiles through boto3 against a real controller process."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from controller.store.records import Node
from controller.store.sqlite import SQLiteStore
from tests.e2e.conftest import ACCOUNT_ID, Controller

TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def add_node(state_dir: Path, name: str) -> None:
    """A node row, as enroll-node makes (the certificate does not matter to the public API)."""
    store = SQLiteStore(state_dir / "rolecall.db")
    try:
        with store.transaction() as tx:
            if tx.get_node(name) is None:
                tx.insert_node(Node(name, "00", "2026-01-01T00:00:00Z", None, None, 0))
    finally:
        store.close()


def node_revision(state_dir: Path, name: str) -> int:
    store = SQLiteStore(state_dir / "rolecall.db")
    try:
        with store.transaction() as tx:
            node = tx.get_node(name)
            assert node is not None
            return node.revision
    finally:
        store.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def nodes(controller: Controller) -> list[str]:
    for name in ("node-a", "node-b"):
        add_node(controller.state_dir, name)
    return ["node-a", "node-b"]


@pytest.fixture
def ec2(controller: Controller, nodes: list[str]) -> Any:
    return controller.client("ec2")


def profile_with_role(iam: Any) -> tuple[str, str]:
    """(profile name, profile ARN) of a new profile holding a new EC2-trusting role."""
    name = unique("prof")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name, profile["Arn"]


def ec2_user(controller: Controller, iam: Any, prefix: str, *statements: dict[str, Any]) -> Any:
    """An EC2 client signed with the key of a new user allowed ec2:*, and these statements."""
    user = unique(prefix)
    iam.create_user(UserName=user)
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}, *statements],
    }
    iam.put_user_policy(UserName=user, PolicyName="ec2", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return boto3.client(
        "ec2",
        endpoint_url=controller.url,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def test_every_launched_instance_carries_the_profile_named_by_name(ec2: Any, iam: Any) -> None:
    name, arn = profile_with_role(iam)
    reservation = ec2.run_instances(
        ImageId="emi-12345678", MinCount=3, MaxCount=3, IamInstanceProfile={"Name": name}
    )
    instances = reservation["Instances"]
    assert len(instances) == 3
    for instance in instances:
        assert re.fullmatch(r"i-[0-9a-f]{17}", instance["InstanceId"])
        assert instance["IamInstanceProfile"]["Arn"] == arn
        assert instance["IamInstanceProfile"]["Id"].startswith("AIPA")
        assert instance["State"]["Name"] == "pending"
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1


def test_a_profile_named_by_arn_and_by_both_agreeing_is_accepted(ec2: Any, iam: Any) -> None:
    name, arn = profile_with_role(iam)
    by_arn = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, IamInstanceProfile={"Arn": arn}
    )
    both = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, IamInstanceProfile={"Arn": arn, "Name": name}
    )
    assert by_arn["Instances"][0]["IamInstanceProfile"]["Arn"] == arn
    assert both["Instances"][0]["IamInstanceProfile"]["Arn"] == arn


def test_arn_and_name_of_different_profiles_are_refused(ec2: Any, iam: Any) -> None:
    first, _ = profile_with_role(iam)
    _, second_arn = profile_with_role(iam)
    code, status, _ = error_of(
        ec2.run_instances,
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Arn": second_arn, "Name": first},
    )
    assert (code, status) == ("InvalidParameterCombination", 400)


def test_an_unknown_profile_is_invalid_parameter_value_in_ec2_words(ec2: Any) -> None:
    code, status, message = error_of(
        ec2.run_instances,
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Name": "no-such-profile"},
    )
    assert (code, status) == ("InvalidParameterValue", 400)
    assert message == (
        "Value (no-such-profile) for parameter iamInstanceProfile.name is invalid."
        " Invalid IAM Instance Profile name"
    )


def test_a_profile_without_a_role_is_refused(ec2: Any, iam: Any) -> None:
    name = unique("empty")
    iam.create_instance_profile(InstanceProfileName=name)
    code, _, message = error_of(
        ec2.run_instances,
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Name": name},
    )
    assert code == "InvalidParameterValue"
    assert "has no role" in message


def test_a_missing_parameter_is_named_in_ec2_words(controller: Controller, nodes: Any) -> None:
    unchecked = controller.client("ec2", parameter_validation=False)
    code, status, message = error_of(unchecked.run_instances, MinCount=1, MaxCount=1)
    assert (code, status) == ("MissingParameter", 400)
    assert message == "The request must contain the parameter ImageId"


def test_placement_names_a_node_or_takes_the_least_loaded(ec2: Any, controller: Controller) -> None:
    placed = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "node-b"}
    )
    assert placed["Instances"][0]["Placement"]["HostId"] == "node-b"
    # Every other node holds an instance whichever tests ran before in this module's controller
    # (alone, node-a would be empty too and win the tie by name).
    ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "node-a"})
    add_node(controller.state_dir, "node-empty")
    least = ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1)
    assert least["Instances"][0]["Placement"]["HostId"] == "node-empty"
    code, _, message = error_of(
        ec2.run_instances, ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "nowhere"}
    )
    assert code == "InvalidParameterValue" and "nowhere" in message


def test_describe_filters_by_state_and_profile_and_pages(ec2: Any, iam: Any) -> None:
    name, arn = profile_with_role(iam)
    launched = ec2.run_instances(
        ImageId="emi-1", MinCount=6, MaxCount=6, IamInstanceProfile={"Name": name}
    )["Instances"]
    ids = sorted(i["InstanceId"] for i in launched)
    ec2.terminate_instances(InstanceIds=ids[:2])
    by_profile = ec2.describe_instances(
        Filters=[{"Name": "iam-instance-profile.arn", "Values": [arn]}]
    )
    found = sorted(i["InstanceId"] for r in by_profile["Reservations"] for i in r["Instances"])
    assert found == ids
    pending = ec2.describe_instances(
        Filters=[
            {"Name": "iam-instance-profile.arn", "Values": [arn]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    assert (
        sorted(i["InstanceId"] for r in pending["Reservations"] for i in r["Instances"]) == ids[2:]
    )
    paged = [
        instance["InstanceId"]
        for page in ec2.get_paginator("describe_instances").paginate(
            PaginationConfig={"PageSize": 5}
        )
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]
    assert set(ids) <= set(paged)
    assert len(paged) == len(set(paged))


def test_unknown_and_malformed_instance_ids(ec2: Any) -> None:
    assert error_of(ec2.describe_instances, InstanceIds=["i-0123456789abcdef0"])[:2] == (
        "InvalidInstanceID.NotFound",
        400,
    )
    assert error_of(ec2.terminate_instances, InstanceIds=["not-an-id"])[:2] == (
        "InvalidInstanceID.Malformed",
        400,
    )


def test_unknown_ids_and_credentials_answer_in_ec2s_own_text(
    ec2: Any, controller: Controller
) -> None:
    assert error_of(ec2.describe_instances, InstanceIds=["i-0123456789abcdef0"]) == (
        "InvalidInstanceID.NotFound",
        400,
        "The instance ID 'i-0123456789abcdef0' does not exist",
    )
    assert error_of(ec2.disassociate_iam_instance_profile, AssociationId="iip-assoc-0abc") == (
        "InvalidAssociationID.NotFound",
        400,
        "An invalid association-id of 'iip-assoc-0abc' was given",
    )
    stranger = boto3.client(
        "ec2",
        endpoint_url=controller.url,
        region_name="us-east-1",
        aws_access_key_id="AKIA" + "Z" * 16,
        aws_secret_access_key="x" * 40,
    )
    assert error_of(stranger.describe_instances) == (
        "AuthFailure",
        401,
        "AWS was not able to validate the provided access credentials",
    )


def test_terminate_reports_previous_and_current_state(ec2: Any) -> None:
    instance_id = ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    change = ec2.terminate_instances(InstanceIds=[instance_id])["TerminatingInstances"][0]
    assert change["PreviousState"]["Name"] == "pending"
    assert change["CurrentState"] == {"Code": 48, "Name": "terminated"}


def test_associations_attach_replace_describe_and_detach(ec2: Any, iam: Any) -> None:
    first_name, first_arn = profile_with_role(iam)
    second_name, second_arn = profile_with_role(iam)
    instance_id = ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    association = ec2.associate_iam_instance_profile(
        IamInstanceProfile={"Name": first_name}, InstanceId=instance_id
    )["IamInstanceProfileAssociation"]
    assert association["IamInstanceProfile"]["Arn"] == first_arn
    assert association["AssociationId"].startswith("iip-assoc-")
    code, _, _ = error_of(
        ec2.associate_iam_instance_profile,
        IamInstanceProfile={"Name": second_name},
        InstanceId=instance_id,
    )
    assert code == "IncorrectState"
    replaced = ec2.replace_iam_instance_profile_association(
        IamInstanceProfile={"Arn": second_arn}, AssociationId=association["AssociationId"]
    )["IamInstanceProfileAssociation"]
    listed = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance_id]}]
    )["IamInstanceProfileAssociations"]
    assert [(a["AssociationId"], a["IamInstanceProfile"]["Arn"]) for a in listed] == [
        (replaced["AssociationId"], second_arn)
    ]
    ec2.disassociate_iam_instance_profile(AssociationId=replaced["AssociationId"])
    assert (
        ec2.describe_iam_instance_profile_associations(
            Filters=[{"Name": "instance-id", "Values": [instance_id]}]
        )["IamInstanceProfileAssociations"]
        == []
    )
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert "IamInstanceProfile" not in described
    assert (
        error_of(ec2.disassociate_iam_instance_profile, AssociationId=replaced["AssociationId"])[0]
        == "InvalidAssociationID.NotFound"
    )


def test_changes_bump_the_node_assignment_revision(
    ec2: Any, iam: Any, controller: Controller
) -> None:
    name, _ = profile_with_role(iam)
    before = node_revision(controller.state_dir, "node-a")
    instance_id = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "node-a"}
    )["Instances"][0]["InstanceId"]
    launched = node_revision(controller.state_dir, "node-a")
    ec2.associate_iam_instance_profile(IamInstanceProfile={"Name": name}, InstanceId=instance_id)
    associated = node_revision(controller.state_dir, "node-a")
    ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")
    modified = node_revision(controller.state_dir, "node-a")
    ec2.terminate_instances(InstanceIds=[instance_id])
    terminated = node_revision(controller.state_dir, "node-a")
    assert before < launched < associated < modified < terminated


def test_modify_metadata_options_reads_back(ec2: Any) -> None:
    instance_id = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, MetadataOptions={"HttpTokens": "optional"}
    )["Instances"][0]["InstanceId"]
    answer = ec2.modify_instance_metadata_options(
        InstanceId=instance_id, HttpTokens="required", HttpPutResponseHopLimit=3
    )
    assert answer["InstanceMetadataOptions"]["HttpPutResponseHopLimit"] == 3
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["MetadataOptions"]["HttpTokens"] == "required"
    code, _, _ = error_of(
        ec2.modify_instance_metadata_options, InstanceId=instance_id, HttpPutResponseHopLimit=65
    )
    assert code == "InvalidParameterValue"


def test_tags_on_launch_are_described_and_filterable(ec2: Any) -> None:
    value = unique("web")
    ec2.run_instances(
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "role", "Value": value}]}],
    )
    found = ec2.describe_instances(Filters=[{"Name": "tag:role", "Values": [value]}])
    instances = [i for r in found["Reservations"] for i in r["Instances"]]
    assert len(instances) == 1
    assert instances[0]["Tags"] == [{"Key": "role", "Value": value}]


def test_dry_run_says_it_would_have_succeeded(ec2: Any) -> None:
    code, status, _ = error_of(
        ec2.run_instances, ImageId="emi-1", MinCount=1, MaxCount=1, DryRun=True
    )
    assert (code, status) == ("DryRunOperation", 412)


def test_a_profile_in_use_cannot_be_deleted(ec2: Any, iam: Any) -> None:
    name, _ = profile_with_role(iam)
    ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1, IamInstanceProfile={"Name": name})
    iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
    assert error_of(iam.delete_instance_profile, InstanceProfileName=name)[0] == "DeleteConflict"


def test_pass_role_is_needed_to_launch_with_a_profile(
    controller: Controller, ec2: Any, iam: Any
) -> None:
    name, _ = profile_with_role(iam)
    as_user = ec2_user(controller, iam, "launcher")
    code, status, message = error_of(
        as_user.run_instances,
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Name": name},
    )
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert "iam:PassRole" in message
    assert f"arn:aws:iam::{ACCOUNT_ID}:role/{name}" in message
    assert as_user.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1)["Instances"]


def test_a_fifty_first_tag_is_tag_limit_exceeded(ec2: Any) -> None:
    """100 instances x 2,000 tags went into the store in one request (issue 16, item 10)."""
    tags = [{"Key": f"k{number}", "Value": "v"} for number in range(51)]
    code, status, message = error_of(
        ec2.run_instances,
        ImageId="emi-1",
        MinCount=1,
        MaxCount=100,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    assert (code, status) == ("TagLimitExceeded", 400)
    assert "maximum number of tags per resource is 50" in message


def test_only_the_operator_may_name_the_node(controller: Controller, ec2: Any, iam: Any) -> None:
    """An IAM user allowed ec2:* still may not choose the node: Placement.HostId is an
    administrator's option (issue 16, item 10)."""
    as_user = ec2_user(controller, iam, "placer")
    code, status, message = error_of(
        as_user.run_instances,
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        Placement={"HostId": "node-a"},
    )
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert "Placement.HostId" in message
    placed = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "node-a"}
    )
    assert placed["Instances"][0]["Placement"]["HostId"] == "node-a"


def test_a_deny_on_one_instance_refuses_terminating_it_among_others(
    controller: Controller, ec2: Any, iam: Any
) -> None:
    launched = ec2.run_instances(ImageId="emi-1", MinCount=2, MaxCount=2)["Instances"]
    kept, free = (instance["InstanceId"] for instance in launched)
    kept_arn = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}:instance/{kept}"
    deny = {"Effect": "Deny", "Action": "ec2:TerminateInstances", "Resource": kept_arn}
    as_user = ec2_user(controller, iam, "terminator", deny)
    code, status, message = error_of(as_user.terminate_instances, InstanceIds=[free, kept])
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert kept_arn in message
    states = {
        instance["InstanceId"]: instance["State"]["Name"]
        for reservation in ec2.describe_instances(InstanceIds=[kept, free])["Reservations"]
        for instance in reservation["Instances"]
    }
    assert states == {kept: "pending", free: "pending"}  # refused whole: neither was touched
    as_user.terminate_instances(InstanceIds=[free])
