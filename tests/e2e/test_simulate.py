"""The IAM policy simulator through boto3: decisions, matched statements, missing context keys."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import ACCOUNT_ID, Controller
from tests.e2e.principals import allow, deny, policy, role_arn, unique, user_arn

ANYWHERE = allow("iam:GetRole")
NO_DELETES = deny("iam:DeleteRole")
FROM_TEN = allow("iam:ListRoles", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
SOURCE_IP_IN_TEN = [
    {"ContextKeyName": "aws:SourceIp", "ContextKeyValues": ["10.1.2.3"], "ContextKeyType": "ip"}
]
SOURCE_IP_ELSEWHERE = [
    {"ContextKeyName": "aws:SourceIp", "ContextKeyValues": ["192.0.2.1"], "ContextKeyType": "ip"}
]


@pytest.fixture(scope="module")
def simulated_user(controller: Controller) -> str:
    """A user with three inline policies: reads (allow), guard (deny), office (conditional)."""
    iam = controller.client("iam")
    name = unique("sim")
    iam.create_user(UserName=name)
    for policy_name, statement in (
        ("reads", ANYWHERE),
        ("guard", NO_DELETES),
        ("office", FROM_TEN),
    ):
        iam.put_user_policy(UserName=name, PolicyName=policy_name, PolicyDocument=policy(statement))
    return user_arn(name)


def only_result(response: dict[str, Any]) -> dict[str, Any]:
    (result,) = response["EvaluationResults"]
    return result


def matched(result: dict[str, Any]) -> list[str]:
    return [statement["SourcePolicyId"] for statement in result["MatchedStatements"]]


@pytest.mark.parametrize(
    ("action", "decision", "sources"),
    [
        ("iam:GetRole", "allowed", ["reads"]),
        ("iam:DeleteRole", "explicitDeny", ["guard"]),
        ("iam:CreateRole", "implicitDeny", []),
    ],
)
def test_simulate_principal_policy_decides_with_the_users_policies(
    iam: Any, simulated_user: str, action: str, decision: str, sources: list[str]
) -> None:
    result = only_result(
        iam.simulate_principal_policy(PolicySourceArn=simulated_user, ActionNames=[action])
    )
    assert (result["EvalActionName"], result["EvalDecision"]) == (action, decision)
    assert matched(result) == sources
    assert all(s["SourcePolicyType"] == "user" for s in result["MatchedStatements"])


def test_simulate_principal_policy_lists_a_condition_key_not_supplied(
    iam: Any, simulated_user: str
) -> None:
    result = only_result(
        iam.simulate_principal_policy(PolicySourceArn=simulated_user, ActionNames=["iam:ListRoles"])
    )
    assert result["EvalDecision"] == "implicitDeny"
    assert result["MissingContextValues"] == ["aws:SourceIp"]


@pytest.mark.parametrize(
    ("entries", "decision"), [(SOURCE_IP_IN_TEN, "allowed"), (SOURCE_IP_ELSEWHERE, "implicitDeny")]
)
def test_simulate_principal_policy_decides_on_the_context_entries_given(
    iam: Any, simulated_user: str, entries: list[dict[str, Any]], decision: str
) -> None:
    result = only_result(
        iam.simulate_principal_policy(
            PolicySourceArn=simulated_user, ActionNames=["iam:ListRoles"], ContextEntries=entries
        )
    )
    assert result["EvalDecision"] == decision
    assert result["MissingContextValues"] == []


@pytest.mark.parametrize(
    ("action", "decision", "sources"),
    [
        ("iam:GetRole", "allowed", ["PolicyInputList.1"]),
        ("iam:DeleteRole", "explicitDeny", ["PolicyInputList.2"]),
        ("iam:CreateRole", "implicitDeny", []),
    ],
)
def test_simulate_custom_policy_decides_with_the_given_policies(
    iam: Any, action: str, decision: str, sources: list[str]
) -> None:
    result = only_result(
        iam.simulate_custom_policy(
            PolicyInputList=[policy(ANYWHERE), policy(NO_DELETES)], ActionNames=[action]
        )
    )
    assert result["EvalDecision"] == decision
    assert matched(result) == sources


def test_simulate_custom_policy_needs_the_context_its_condition_reads(iam: Any) -> None:
    without = only_result(
        iam.simulate_custom_policy(
            PolicyInputList=[policy(FROM_TEN)], ActionNames=["iam:ListRoles"]
        )
    )
    given = only_result(
        iam.simulate_custom_policy(
            PolicyInputList=[policy(FROM_TEN)],
            ActionNames=["iam:ListRoles"],
            ContextEntries=SOURCE_IP_IN_TEN,
        )
    )
    assert (without["EvalDecision"], without["MissingContextValues"]) == (
        "implicitDeny",
        ["aws:SourceIp"],
    )
    assert (given["EvalDecision"], given["MissingContextValues"]) == ("allowed", [])
    assert matched(given) == ["PolicyInputList.1"]


def test_simulation_evaluates_every_action_on_every_resource(iam: Any) -> None:
    statement = allow("iam:GetRole", f"arn:aws:iam::{ACCOUNT_ID}:role/app-*")
    response = iam.simulate_custom_policy(
        PolicyInputList=[policy(statement)],
        ActionNames=["iam:GetRole", "iam:DeleteRole"],
        ResourceArns=[role_arn("app-web"), role_arn("db")],
    )
    decisions = {
        (r["EvalActionName"], r["EvalResourceName"].rpartition("/")[2]): r["EvalDecision"]
        for r in response["EvaluationResults"]
    }
    assert decisions == {
        ("iam:GetRole", "app-web"): "allowed",
        ("iam:GetRole", "db"): "implicitDeny",
        ("iam:DeleteRole", "app-web"): "implicitDeny",
        ("iam:DeleteRole", "db"): "implicitDeny",
    }


def test_a_marker_the_simulator_did_not_hand_out_is_invalid_input_not_a_500(iam: Any) -> None:
    """The Marker was read with int(): a foreign one was an InternalFailure (issue 16, item 12)."""
    with pytest.raises(iam.exceptions.InvalidInputException) as raised:
        iam.simulate_custom_policy(
            PolicyInputList=[policy(ANYWHERE)], ActionNames=["iam:GetRole"], Marker="djE6eHl6"
        )
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_simulation_pages_through_every_action_and_resource(iam: Any) -> None:
    names = [f"iam:Action{n}" for n in range(7)]
    arns = [role_arn(f"r{n}") for n in range(3)]
    seen: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {}
    while True:
        page = iam.simulate_custom_policy(
            PolicyInputList=[policy(ANYWHERE)],
            ActionNames=names,
            ResourceArns=arns,
            MaxItems=4,
            **kwargs,
        )
        assert len(page["EvaluationResults"]) <= 4
        seen += [(r["EvalActionName"], r["EvalResourceName"]) for r in page["EvaluationResults"]]
        if not page["IsTruncated"]:
            break
        kwargs = {"Marker": page["Marker"]}
    assert seen == [(name, arn) for name in names for arn in arns]


def test_simulation_refuses_more_than_1000_action_names(iam: Any) -> None:
    with pytest.raises(iam.exceptions.ClientError) as raised:
        iam.simulate_custom_policy(
            PolicyInputList=[policy(ANYWHERE)],
            ActionNames=[f"iam:Action{n}" for n in range(1001)],
        )
    error = raised.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert error["Message"].endswith(
        "at 'actionNames' failed to satisfy constraint:"
        " Member must have length less than or equal to 1000"
    )
