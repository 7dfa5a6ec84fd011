"""The policy simulator's work is bounded: bounded lists, only the requested page is evaluated.

Issue 16, item 4: ActionNames x ResourceArns were all evaluated and kept in memory (600 x 600 took
1.7 s), and a Marker the simulator did not hand out was a 500. Work is counted, never timed:
`evaluate` is wrapped to count its calls and to stop a test that would make too many.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

import controller.iam
import controller.iam.simulate as simulate
from controller.errors import InvalidInput, ValidationError
from controller.iam.common import encode_marker
from controller.query import parse_input

ACCOUNT_ID = "123456789012"
ALLOW_GET_ROLE = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iam:GetRole", "Resource": "*"}],
    }
)


def custom_input(params: dict[str, str]) -> dict[str, Any]:
    action = controller.iam.registry.get("iam", "SimulateCustomPolicy")
    assert action is not None
    return parse_input({"PolicyInputList.member.1": ALLOW_GET_ROLE, **params}, action.input)


def actions(count: int) -> dict[str, str]:
    return {f"ActionNames.member.{n}": f"iam:Action{n}" for n in range(1, count + 1)}


def resources(count: int) -> dict[str, str]:
    return {
        f"ResourceArns.member.{n}": f"arn:aws:iam::{ACCOUNT_ID}:role/r{n}"
        for n in range(1, count + 1)
    }


CONTEXT = SimpleNamespace(
    account_id=ACCOUNT_ID, caller=SimpleNamespace(arn=f"arn:aws:iam::{ACCOUNT_ID}:user/alice")
)


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The (action, resource) of every evaluation; more than 5,000 fails the test at once."""
    seen: list[tuple[str, str]] = []
    real = simulate.evaluate

    def counted(documents: Any, request: Any) -> Any:
        seen.append((request.action, request.resource))
        assert len(seen) <= 5_000, "the simulator evaluated more than a page"
        return real(documents, request)

    monkeypatch.setattr(simulate, "evaluate", counted)
    return seen


def simulate_custom(params: dict[str, Any]) -> dict[str, Any]:
    return dict(simulate.simulate_custom_policy(CONTEXT, params) or {})  # type: ignore[arg-type]


def test_only_the_requested_page_is_evaluated(evaluations: list[tuple[str, str]]) -> None:
    """600 actions x 600 resources, MaxItems 10: ten evaluations, not 360,000."""
    params = custom_input({**actions(600), **resources(600), "MaxItems": "10"})
    page = simulate_custom(params)
    assert len(page["EvaluationResults"]) == 10
    assert len(evaluations) == 10
    assert page["IsTruncated"] is True


def test_pages_follow_each_other_in_action_then_resource_order(
    evaluations: list[tuple[str, str]],
) -> None:
    params = custom_input({**actions(3), **resources(2), "MaxItems": "4"})
    first = simulate_custom(params)
    second = simulate_custom({**params, "Marker": first["Marker"]})
    shown = [
        (result["EvalActionName"], result["EvalResourceName"].rpartition("/")[2])
        for result in first["EvaluationResults"] + second["EvaluationResults"]
    ]
    assert shown == [(f"iam:Action{a}", f"r{r}") for a in (1, 2, 3) for r in (1, 2)]
    assert (first["IsTruncated"], second["IsTruncated"], "Marker" in second) == (True, False, False)
    assert len(evaluations) == 6


@pytest.mark.parametrize(
    "marker",
    [
        encode_marker("abc"),
        encode_marker("-1"),
        encode_marker("0"),
        encode_marker("6"),  # past the last of 3 x 2 results
        encode_marker("9" * 40),
        "not-base64!",
    ],
)
def test_a_marker_the_simulator_did_not_hand_out_is_invalid_input(marker: str) -> None:
    params = custom_input({**actions(3), **resources(2), "Marker": marker})
    with pytest.raises(InvalidInput, match="Invalid Marker"):
        simulate_custom(params)


@pytest.mark.parametrize(
    ("params", "path", "bound"),
    [
        (actions(simulate.MAX_ACTION_NAMES + 1), "actionNames", simulate.MAX_ACTION_NAMES),
        (
            {**actions(1), **resources(simulate.MAX_RESOURCE_ARNS + 1)},
            "resourceArns",
            simulate.MAX_RESOURCE_ARNS,
        ),
        (
            {
                **actions(1),
                **{
                    f"PolicyInputList.member.{n}": ALLOW_GET_ROLE
                    for n in range(2, simulate.MAX_POLICY_INPUTS + 2)
                },
            },
            "policyInputList",
            simulate.MAX_POLICY_INPUTS,
        ),
        (
            {
                **actions(1),
                **{
                    f"ContextEntries.member.{n}.ContextKeyName": f"aws:Key{n}"
                    for n in range(1, simulate.MAX_CONTEXT_ENTRIES + 2)
                },
            },
            "contextEntries",
            simulate.MAX_CONTEXT_ENTRIES,
        ),
        (
            {
                **actions(1),
                "ContextEntries.member.1.ContextKeyName": "aws:SourceIp",
                **{
                    f"ContextEntries.member.1.ContextKeyValues.member.{n}": "10.0.0.1"
                    for n in range(1, simulate.MAX_CONTEXT_KEY_VALUES + 2)
                },
            },
            "contextEntries.1.member.contextKeyValues",
            simulate.MAX_CONTEXT_KEY_VALUES,
        ),
    ],
    ids=["ActionNames", "ResourceArns", "PolicyInputList", "ContextEntries", "ContextKeyValues"],
)
def test_simulator_lists_over_their_bound_are_validation_errors(
    params: dict[str, str], path: str, bound: int
) -> None:
    with pytest.raises(ValidationError) as raised:
        custom_input(params)
    assert raised.value.message.endswith(
        f"at '{path}' failed to satisfy constraint:"
        f" Member must have length less than or equal to {bound}"
    )


def test_a_policy_input_over_131072_characters_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*arguments: object) -> None:
        raise AssertionError("parsed a document over the size limit")

    monkeypatch.setattr(simulate, "parse_policy", never)
    document = ALLOW_GET_ROLE[:-2] + " " * (131_072 - len(ALLOW_GET_ROLE) + 1) + "]}"
    with pytest.raises(ValidationError, match="less than or equal to 131072"):
        custom_input({**actions(1), "PolicyInputList.member.1": document})


def test_a_page_of_heavy_evaluations_stops_at_the_work_budget(
    evaluations: list[tuple[str, str]],
) -> None:
    """Large policies and wide context keys: fewer than MaxItems results, then the rest."""
    statement = {
        "Effect": "Allow",
        "Action": "iam:*",
        "Resource": "*",
        "Condition": {"StringLike": {"aws:SourceVpc": [f"vpc-{n:06d}*" for n in range(4_000)]}},
    }
    heavy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    context = {
        "ContextEntries.member.1.ContextKeyName": "aws:SourceVpc",
        "ContextEntries.member.1.ContextKeyType": "stringList",
        **{
            f"ContextEntries.member.1.ContextKeyValues.member.{n}": f"vpc-x{n}"
            for n in range(1, 101)
        },
    }
    params = custom_input(
        {**actions(50), **context, "PolicyInputList.member.1": heavy, "MaxItems": "1000"}
    )
    work = (len(heavy) + 1) * 101
    per_page = simulate.PAGE_WORK_BUDGET // work
    assert 1 <= per_page < 50
    results = []
    page = simulate_custom(params)
    results += page["EvaluationResults"]
    assert len(page["EvaluationResults"]) == per_page
    while page["IsTruncated"]:
        page = simulate_custom({**params, "Marker": page["Marker"]})
        assert 1 <= len(page["EvaluationResults"]) <= per_page
        results += page["EvaluationResults"]
    assert [result["EvalActionName"] for result in results] == [
        f"iam:Action{n}" for n in range(1, 51)
    ]
    assert len(evaluations) == 50
