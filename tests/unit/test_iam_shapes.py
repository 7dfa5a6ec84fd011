"""Every IAM action we serve declares its input as botocore's IAM model does.

botocore's model is what SDKs send; a member we bound differently refuses (or lets through) what
AWS would not. One test per registered action; each lists every disagreement it finds.
"""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest

import controller.iam
from controller.query import Bool, Field, Int, ListOf, Shape, Str, Struct

IAM_MODEL = botocore.session.get_session().get_service_model("iam")


def differences(ours: Shape, theirs: Any, path: str) -> list[str]:
    """How our shape differs from botocore's shape `theirs` at `path` (empty when they agree)."""
    kind = theirs.type_name
    if isinstance(ours, Str):
        if kind != "string":
            return [f"{path}: we read a string, botocore has {kind}"]
        return _string_differences(ours, theirs, path)
    if isinstance(ours, Int):
        if kind not in ("integer", "long"):
            return [f"{path}: we read an integer, botocore has {kind}"]
        return _bounds(path, "value", (ours.minimum, ours.maximum), _metadata_bounds(theirs, None))
    if isinstance(ours, Bool):
        return [] if kind == "boolean" else [f"{path}: we read a boolean, botocore has {kind}"]
    if isinstance(ours, ListOf):
        if kind != "list":
            return [f"{path}: we read a list, botocore has {kind}"]
        found = _bounds(
            path, "items", (ours.min_items, ours.max_items), _metadata_bounds(theirs, 0)
        )
        if theirs.serialization.get("flattened"):
            found.append(f"{path}: botocore sends this list flattened")
        member_name = theirs.member.serialization.get("name", "member")
        if member_name != "member":
            found.append(f"{path}: botocore names list items {member_name!r}, not 'member'")
        return found + differences(ours.member, theirs.member, f"{path}.member")
    if kind != "structure":
        return [f"{path}: we read a structure, botocore has {kind}"]
    return struct_differences(ours, theirs, path)


def struct_differences(ours: Struct, theirs: Any, path: str) -> list[str]:
    found = []
    declared: dict[str, Field] = {item.name: item for item in ours.fields}
    required = set(theirs.required_members)

    def named(name: str) -> str:
        return f"{path}.{name}" if path else name

    for name in theirs.required_members:
        if name not in declared:
            found.append(f"{named(name)}: botocore requires it, we do not declare it")
    for name, item in declared.items():
        if name not in theirs.members:
            found.append(f"{named(name)}: we declare it, botocore has no such member")
            continue
        member = theirs.members[name]
        if item.required != (name in required):
            found.append(
                f"{named(name)}: required is {item.required} here, {name in required} in botocore"
            )
        wire = item.wire_name or name
        their_wire = member.serialization.get("name", name)
        if wire != their_wire:
            found.append(f"{named(name)}: we read it as {wire!r}, botocore sends {their_wire!r}")
        found += differences(item.shape, member, named(name))
    return found


def _string_differences(ours: Str, theirs: Any, path: str) -> list[str]:
    found = _bounds(path, "length", (ours.min_length, ours.max_length), _metadata_bounds(theirs, 0))
    their_pattern = theirs.metadata.get("pattern")
    # A predicate stands in for a pattern Python's `re` cannot spell; its text must be theirs.
    our_pattern = ours.check_text if ours.check is not None else ours.pattern
    if ours.check is not None and ours.pattern is not None:
        found.append(f"{path}: both a pattern and a check; botocore has one pattern")
    if our_pattern != their_pattern:
        found.append(f"{path}: pattern {our_pattern!r} here, {their_pattern!r} in botocore")
    their_enum = tuple(theirs.enum) if theirs.enum else ()
    if ours.enum != their_enum:
        found.append(f"{path}: enum {ours.enum!r} here, {their_enum!r} in botocore")
    return found


def _metadata_bounds(theirs: Any, default_minimum: int | None) -> tuple[int | None, int | None]:
    return theirs.metadata.get("min", default_minimum), theirs.metadata.get("max")


def _bounds(
    path: str, what: str, ours: tuple[int | None, int | None], theirs: tuple[int | None, int | None]
) -> list[str]:
    found = []
    for bound, mine, botocore_bound in zip(("min", "max"), ours, theirs, strict=True):
        if mine != botocore_bound:
            found.append(f"{path}: {what} {bound} {mine} here, {botocore_bound} in botocore")
    return found


ACTIONS = controller.iam.registry.names("iam")


def test_iam_actions_are_registered() -> None:
    assert "CreateRole" in ACTIONS
    assert len(ACTIONS) >= 20


@pytest.mark.parametrize("action_name", ACTIONS)
def test_action_input_agrees_with_botocore(action_name: str) -> None:
    action = controller.iam.registry.get("iam", action_name)
    assert action is not None
    assert action_name in IAM_MODEL.operation_names, f"botocore's IAM has no {action_name}"
    their_input = IAM_MODEL.operation_model(action_name).input_shape
    assert struct_differences(action.input, their_input, "") == []


# The comparison itself must see a disagreement, or the tests above could not fail.

ROLE_NAME_MODEL = IAM_MODEL.operation_model("GetRole").input_shape
TAG_ROLE_MODEL = IAM_MODEL.operation_model("TagRole").input_shape
NAME_PATTERN = r"[\w+=,.@-]+"


@pytest.mark.parametrize(
    ("ours", "expected"),
    [
        (
            Struct((Field("RoleName", Str(1, 63, NAME_PATTERN), required=True),)),
            ["RoleName: length max 63 here, 64 in botocore"],
        ),
        (
            Struct((Field("RoleName", Str(0, 64, NAME_PATTERN), required=True),)),
            ["RoleName: length min 0 here, 1 in botocore"],
        ),
        (
            Struct((Field("RoleName", Str(1, 64, r"[\w+=,.@]+"), required=True),)),
            [r"RoleName: pattern '[\\w+=,.@]+' here, '[\\w+=,.@-]+' in botocore"],
        ),
        (
            Struct((Field("RoleName", Str(1, 64, NAME_PATTERN)),)),
            ["RoleName: required is False here, True in botocore"],
        ),
        (
            Struct(()),
            ["RoleName: botocore requires it, we do not declare it"],
        ),
        (
            Struct(
                (
                    Field("RoleName", Str(1, 64, NAME_PATTERN), required=True),
                    Field("Extra", Str()),
                )
            ),
            ["Extra: we declare it, botocore has no such member"],
        ),
        (
            Struct((Field("RoleName", Int(), required=True),)),
            ["RoleName: we read an integer, botocore has string"],
        ),
    ],
)
def test_comparison_reports_a_disagreement_with_get_role(ours: Struct, expected: list[str]) -> None:
    assert struct_differences(ours, ROLE_NAME_MODEL, "") == expected


def test_comparison_reports_a_list_bound_and_a_check_text_inside_a_list() -> None:
    from controller.iam.shapes import ROLE_NAME, TAG_LIST

    tag = TAG_LIST.member
    assert isinstance(tag, Struct)
    key = tag.fields[0]
    assert isinstance(key.shape, Str)
    loose_key = Str(1, 128, check=key.shape.check, check_text="[a-z]+")
    ours = Struct(
        (
            Field("RoleName", ROLE_NAME, required=True),
            Field(
                "Tags",
                ListOf(Struct((Field("Key", loose_key, required=True), tag.fields[1])), 49),
                required=True,
            ),
        )
    )
    assert struct_differences(ours, TAG_ROLE_MODEL, "") == [
        "Tags: items max 49 here, 50 in botocore",
        r"Tags.member.Key: pattern '[a-z]+' here, '[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]+' in botocore",
    ]
