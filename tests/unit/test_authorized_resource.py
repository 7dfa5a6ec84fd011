"""The resource an action authorizes is the resource it acts on, whatever the request's spelling.

IAM finds names ignoring case, and policies match ARNs case-sensitively: an action that named an
entity as the caller typed it (``RoleName=ADMIN``) would slip past a Deny on ``role/Admin``. Every
action of the public API that names a role, a user, a group, an instance profile or instances is
checked here, straight from the registry, so a new action cannot bring the bypass back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.accounts import ensure_first_account
from controller.actions import Action, Caller, Context
from controller.authorize import authorize
from controller.compose import api_registry
from controller.errors import AccessDenied
from controller.store.records import Group, InstanceProfile, Role, User, UserPolicy
from controller.store.sqlite import SQLiteStore

ACCOUNT_ID = "111122223333"
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
#: The names under which each kind of entity is named in actions' inputs.
NAMED = {
    "RoleName": f"arn:aws:iam::{ACCOUNT_ID}:role/team/Admin",
    "UserName": f"arn:aws:iam::{ACCOUNT_ID}:user/team/Admin",
    "InstanceProfileName": f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/team/Admin",
    "GroupName": f"arn:aws:iam::{ACCOUNT_ID}:group/team/Admin",
}
SPELLINGS = ("admin", "ADMIN", "aDmIn")
GUARDED = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}:instance/i-0123456789abcdef0"
OTHER = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}:instance/i-00000000000000000"
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Deny", "Action": "*", "Resource": [*NAMED.values(), GUARDED]},
        ],
    }
)


@pytest.fixture
def context() -> Iterator[Context]:
    """A user allowed everything but the entities named Admin (path /team/) and one instance."""
    store = SQLiteStore(":memory:")
    with store.transaction() as tx:
        ensure_first_account(tx, ACCOUNT_ID, "test", "2024-05-01T00:00:00Z")
        created = "2024-05-01T00:00:00Z"
        tx.insert_role(Role("AROAADMIN", ACCOUNT_ID, "Admin", "/team/", "{}", None, 3600, created))
        tx.insert_user(User("AIDAADMIN", ACCOUNT_ID, "Admin", "/team/", created))
        tx.insert_instance_profile(
            InstanceProfile("AIPAADMIN", ACCOUNT_ID, "Admin", "/team/", None, created)
        )
        tx.insert_group(Group("AGPAADMIN", ACCOUNT_ID, "Admin", "/team/", created))
        tx.insert_user(User("AIDACALLER", ACCOUNT_ID, "caller", "/", created))
        tx.put_user_policy(UserPolicy("AIDACALLER", "all-but-admin", POLICY))
        caller = Caller(
            account_id=ACCOUNT_ID,
            arn=f"arn:aws:iam::{ACCOUNT_ID}:user/caller",
            access_key_id="AKIACALLER",
            user_id="AIDACALLER",
            kind="user",
            user_name="caller",
            issuer_user_id="AIDACALLER",
        )
        yield Context(tx, caller, NOW)
    store.close()


def _field_names(action: Action) -> set[str]:
    return {field.name for field in action.input.fields}


def _naming_actions() -> list[tuple[str, Action]]:
    return sorted(
        (
            (name, action)
            for action in api_registry()
            for name in NAMED
            if name in _field_names(action)
        ),
        key=lambda pair: (pair[1].iam_action, pair[0]),
    )


def test_about_forty_actions_name_a_role_a_user_or_an_instance_profile() -> None:
    # The table below must not silently become empty if the registry is reorganised.
    assert len(_naming_actions()) >= 35


@pytest.mark.parametrize(
    ("field", "action"),
    _naming_actions(),
    ids=[f"{action.iam_action}-{field}" for field, action in _naming_actions()],
)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_an_explicit_deny_holds_however_the_request_spells_the_name(
    context: Context, field: str, action: Action, spelling: str
) -> None:
    params: dict[str, Any] = {
        name: "someone-else" for name in NAMED if name in _field_names(action)
    }
    params[field] = spelling
    resource_of = action.resource
    if resource_of is None:  # the handler authorizes itself: no name of these kinds reaches it
        pytest.fail(f"{action.iam_action} names {field} but authorizes nothing before it runs")
    resource = resource_of(context, params)
    arns = (resource,) if isinstance(resource, str) else resource
    if field == "RoleName" and action.name in (
        "AddRoleToInstanceProfile",
        "RemoveRoleFromInstanceProfile",
    ):
        # As in IAM, these act on the profile (Add* also authorizes iam:PassRole on the role,
        # by its stored ARN: see resolve_profile and add_role_to_instance_profile).
        assert arns == (f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/someone-else",)
        return
    if field == "UserName" and action.name in ("AddUserToGroup", "RemoveUserFromGroup"):
        # As in IAM, these act on the group alone.
        assert arns == (f"arn:aws:iam::{ACCOUNT_ID}:group/someone-else",)
        return
    assert arns == (NAMED[field],)
    with pytest.raises(AccessDenied, match="with an explicit deny"):
        for arn in arns:
            authorize(context, action.iam_action, arn)


def test_a_name_that_names_nothing_yet_is_authorized_as_given(context: Context) -> None:
    create_role = api_registry().get("iam", "CreateRole")
    assert create_role is not None and create_role.resource is not None
    resource = create_role.resource(context, {"RoleName": "NewRole", "Path": "/ops/"})
    assert resource == f"arn:aws:iam::{ACCOUNT_ID}:role/ops/NewRole"


def test_terminate_instances_authorizes_every_instance_it_names(context: Context) -> None:
    terminate = api_registry().get("ec2", "TerminateInstances")
    assert terminate is not None and terminate.resource is not None
    ids = ["i-00000000000000000", "i-0123456789abcdef0", "i-00000000000000000"]
    resources = terminate.resource(context, {"InstanceIds": ids})
    assert resources == (OTHER, GUARDED)
    authorize(context, "ec2:TerminateInstances", OTHER)
    with pytest.raises(AccessDenied, match="with an explicit deny"):
        authorize(context, "ec2:TerminateInstances", GUARDED)


def test_every_action_that_names_instances_authorizes_them(context: Context) -> None:
    """An action with InstanceId(s) in its input authorizes the instance ARNs, never a
    wildcard; the Describe actions, which AWS authorizes on ``*`` only, are the exception."""
    for action in api_registry():
        names = _field_names(action) & {"InstanceId", "InstanceIds"}
        if not names or action.name.startswith("Describe"):
            continue
        assert action.resource is not None, action.name
        value: Any = ["i-0123456789abcdef0"] if "InstanceIds" in names else "i-0123456789abcdef0"
        resource = action.resource(context, {name: value for name in names})
        arns = (resource,) if isinstance(resource, str) else resource
        assert arns == (GUARDED,), action.name
