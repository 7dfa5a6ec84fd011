"""STS through boto3 against a real controller process: identities, AssumeRole's rules, tokens."""

from __future__ import annotations

import configparser
import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.keyring import load_key_ring
from controller.tokens import SessionClaims, new_credentials_ids, new_key_ring, seal, token_key_id
from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller, start_controller, stop_controller
from tests.e2e.principals import (
    Keys,
    allow,
    assert_no_issued_secret_in_log,
    error_of,
    new_role,
    new_user,
    policy,
    role_arn,
    trust,
    unique,
    user_arn,
)

ROOT_ARN = f"arn:aws:iam::{ACCOUNT_ID}:root"
TEMPORARY_KEY_ID = re.compile(r"ASIA[A-Z2-7]{16}")
EC2_TRUST = trust({"Service": "ec2.amazonaws.com"})
#: How far the controller's idea of "now" may be from the test's when checking an Expiration.
SLACK = timedelta(seconds=30)


def root_sts(controller: Controller) -> Any:
    return Keys.root(controller).client(controller, "sts")


def user_with_sts(controller: Controller, *documents: str) -> tuple[str, Any]:
    """A new user's name and an STS client signed with its access key."""
    name = unique("user")
    return name, new_user(controller, name, *documents).client(controller, "sts")


def assume(sts: Any, arn: str, **kwargs: Any) -> dict[str, Any]:
    response: dict[str, Any] = sts.assume_role(
        RoleArn=arn, RoleSessionName=kwargs.pop("RoleSessionName", "s1"), **kwargs
    )
    return response


def expires_in(response: dict[str, Any]) -> timedelta:
    expiration: datetime = response["Credentials"]["Expiration"]
    return expiration - datetime.now(UTC)


def close_to(duration: timedelta, seconds: int) -> bool:
    return timedelta(seconds=seconds) - SLACK <= duration <= timedelta(seconds=seconds) + SLACK


# -- who the caller is -------------------------------------------------------------------------


def test_the_root_is_the_account_root_with_the_account_id_as_user_id(
    controller: Controller,
) -> None:
    identity = root_sts(controller).get_caller_identity()
    assert (identity["Arn"], identity["UserId"], identity["Account"]) == (
        ROOT_ARN,
        ACCOUNT_ID,
        ACCOUNT_ID,
    )


def test_a_user_is_its_user_arn_with_its_aida_user_id(controller: Controller) -> None:
    name, sts = user_with_sts(controller)
    created = controller.client("iam").get_user(UserName=name)["User"]
    identity = sts.get_caller_identity()
    assert identity["Arn"] == user_arn(name)
    assert identity["UserId"] == created["UserId"]
    assert re.fullmatch(r"AIDA[A-Z2-7]{17}", identity["UserId"])


def test_an_assumed_role_is_its_session_arn_with_role_id_and_session_name(
    controller: Controller,
) -> None:
    user, sts = user_with_sts(controller)
    role = unique("who")
    arn = new_role(controller, role, trust({"AWS": user_arn(user)}))
    role_id = controller.client("iam").get_role(RoleName=role)["Role"]["RoleId"]
    response = assume(sts, arn, RoleSessionName="build-42")
    identity = Keys.of(response).client(controller, "sts").get_caller_identity()
    session_arn = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role}/build-42"
    assert identity["Arn"] == session_arn
    assert identity["UserId"] == f"{role_id}:build-42"
    assert role_id.startswith("AROA")
    assert response["AssumedRoleUser"] == {
        "AssumedRoleId": f"{role_id}:build-42",
        "Arn": session_arn,
    }
    assert TEMPORARY_KEY_ID.fullmatch(response["Credentials"]["AccessKeyId"])


def test_a_federated_user_is_its_federated_arn_with_account_and_name(
    controller: Controller,
) -> None:
    name = unique("fed")
    response = root_sts(controller).get_federation_token(Name=name)
    identity = Keys.of(response).client(controller, "sts").get_caller_identity()
    arn = f"arn:aws:sts::{ACCOUNT_ID}:federated-user/{name}"
    assert (identity["Arn"], identity["UserId"]) == (arn, f"{ACCOUNT_ID}:{name}")
    assert response["FederatedUser"] == {"FederatedUserId": f"{ACCOUNT_ID}:{name}", "Arn": arn}
    assert TEMPORARY_KEY_ID.fullmatch(response["Credentials"]["AccessKeyId"])


def test_session_token_credentials_are_the_user_itself(controller: Controller) -> None:
    name, sts = user_with_sts(controller)
    user = sts.get_caller_identity()
    response = sts.get_session_token()
    identity = Keys.of(response).client(controller, "sts").get_caller_identity()
    assert (identity["Arn"], identity["UserId"]) == (user_arn(name), user["UserId"])
    assert TEMPORARY_KEY_ID.fullmatch(response["Credentials"]["AccessKeyId"])


# -- GetFederationToken durations ----------------------------------------------------------------


def test_federation_by_the_root_is_capped_at_one_hour(controller: Controller) -> None:
    response = root_sts(controller).get_federation_token(Name=unique("cap"), DurationSeconds=43200)
    assert expires_in(response) <= timedelta(seconds=3600) + SLACK
    assert close_to(expires_in(response), 3600)


def test_federation_by_a_user_lasts_twelve_hours_by_default(controller: Controller) -> None:
    _, sts = user_with_sts(controller, policy(allow("sts:GetFederationToken")))
    response = sts.get_federation_token(Name=unique("long"))
    assert close_to(expires_in(response), 43200)


def test_a_user_without_a_policy_for_it_cannot_federate(controller: Controller) -> None:
    user, sts = user_with_sts(controller)
    name = unique("nofed")
    code, status, message = error_of(sts.get_federation_token, Name=name)
    assert (code, status) == ("AccessDenied", 403)
    assert message.startswith(
        f"User: {user_arn(user)} is not authorized to perform: sts:GetFederationToken"
        f" on resource: arn:aws:sts::{ACCOUNT_ID}:federated-user/{name}"
    )


# -- AssumeRole: who may ------------------------------------------------------------------------


def test_a_trust_policy_that_does_not_name_the_caller_is_access_denied(
    controller: Controller,
) -> None:
    user, sts = user_with_sts(controller, policy(allow("sts:AssumeRole")))
    arn = new_role(controller, unique("other"), trust({"AWS": user_arn("someone-else")}))
    code, status, message = error_of(assume, sts=sts, arn=arn)
    assert (code, status) == ("AccessDenied", 403)
    # AWS's text ends at the role's ARN; RoleCall's reason (the trust policy) is in its log.
    assert message == f"User: {user_arn(user)} is not authorized to perform: sts:AssumeRole" + (
        f" on resource: {arn}"
    )


def test_a_service_trust_does_not_let_a_user_assume_the_role(controller: Controller) -> None:
    _, sts = user_with_sts(controller, policy(allow("sts:AssumeRole")))
    arn = new_role(controller, unique("ec2"), EC2_TRUST)
    assert error_of(assume, sts=sts, arn=arn)[:2] == ("AccessDenied", 403)


def test_a_trust_naming_the_user_needs_no_identity_policy_in_the_same_account(
    controller: Controller,
) -> None:
    user, sts = user_with_sts(controller)
    arn = new_role(controller, unique("named"), trust({"AWS": user_arn(user)}))
    assert assume(sts, arn)["AssumedRoleUser"]["Arn"].endswith("/s1")


def test_a_trust_naming_the_account_needs_the_users_identity_policy(
    controller: Controller,
) -> None:
    user, sts = user_with_sts(controller)
    arn = new_role(controller, unique("acct"), trust({"AWS": ROOT_ARN}))
    code, status, message = error_of(assume, sts=sts, arn=arn)
    assert (code, status) == ("AccessDenied", 403)
    assert message.startswith(
        f"User: {user_arn(user)} is not authorized to perform: sts:AssumeRole on resource: {arn}"
    )
    controller.client("iam").put_user_policy(
        UserName=user, PolicyName="assume", PolicyDocument=policy(allow("sts:AssumeRole", arn))
    )
    assert assume(sts, arn)["AssumedRoleUser"]["Arn"].endswith("/s1")


def test_a_nonexistent_role_is_access_denied_not_no_such_entity(controller: Controller) -> None:
    arn = role_arn(unique("ghost"))
    code, status, message = error_of(assume, sts=root_sts(controller), arn=arn)
    assert (code, status) == ("AccessDenied", 403)
    assert message.startswith(
        f"User: {ROOT_ARN} is not authorized to perform: sts:AssumeRole on resource: {arn}"
    )


def test_a_federated_user_cannot_assume_a_role_even_one_whose_trust_names_it(
    controller: Controller,
) -> None:
    """Federated credentials may call only GetCallerIdentity in STS (spec, STS)."""
    name = unique("fedar")
    response = root_sts(controller).get_federation_token(Name=name)
    federated = Keys.of(response).client(controller, "sts")
    arn = new_role(controller, unique("fedrole"), trust({"AWS": response["FederatedUser"]["Arn"]}))
    code, status, message = error_of(assume, sts=federated, arn=arn)
    assert (code, status) == ("AccessDenied", 403)
    assert message.startswith(
        f"User: {response['FederatedUser']['Arn']} is not authorized to perform: sts:AssumeRole"
    )


# -- AssumeRole across accounts ------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_account(controller: Controller) -> Keys:
    """A second account, created with the CLI next to the running controller: its root keys."""
    created = subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "account", "create",
         "other"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    match = re.search(r"root key\s+in (\S+) \(profile rolecall\)", created.stdout)
    assert match is not None, created.stdout
    path = Path(match.group(1))
    assert path.parent == controller.state_dir / "accounts"
    credentials = configparser.ConfigParser()
    credentials.read(path)
    return Keys(
        credentials["rolecall"]["aws_access_key_id"],
        credentials["rolecall"]["aws_secret_access_key"],
    )


@pytest.fixture(scope="module")
def other_account_id(controller: Controller, other_account: Keys) -> str:
    account: str = other_account.client(controller, "sts").get_caller_identity()["Account"]
    assert account != ACCOUNT_ID
    return account


@pytest.fixture(scope="module")
def external_id_role(controller: Controller, other_account_id: str) -> str:
    condition = {"StringEquals": {"sts:ExternalId": "the-right-one"}}
    return new_role(controller, unique("xacct"), trust({"AWS": other_account_id}, condition))


@pytest.mark.parametrize(
    ("external_id", "allowed"),
    [(None, False), ("the-wrong-one", False), ("the-right-one", True)],
)
def test_another_account_assumes_the_role_only_with_the_right_external_id(
    controller: Controller,
    other_account: Keys,
    external_id_role: str,
    external_id: str | None,
    allowed: bool,
) -> None:
    sts = other_account.client(controller, "sts")
    kwargs = {} if external_id is None else {"ExternalId": external_id}
    if not allowed:
        assert error_of(assume, sts=sts, arn=external_id_role, **kwargs)[:2] == (
            "AccessDenied",
            403,
        )
        return
    response = assume(sts, external_id_role, **kwargs)
    role = external_id_role.rpartition("/")[2]
    assert response["AssumedRoleUser"]["Arn"] == (
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role}/s1"
    )
    identity = Keys.of(response).client(controller, "sts").get_caller_identity()
    assert identity["Account"] == ACCOUNT_ID


def test_a_trust_naming_only_this_account_refuses_another_accounts_root(
    controller: Controller, other_account: Keys
) -> None:
    arn = new_role(controller, unique("local"), trust({"AWS": ROOT_ARN}))
    sts = other_account.client(controller, "sts")
    assert error_of(assume, sts=sts, arn=arn)[:2] == ("AccessDenied", 403)


def test_another_accounts_user_needs_its_own_policy_even_when_the_trust_names_it(
    controller: Controller, other_account: Keys, other_account_id: str
) -> None:
    other_iam = other_account.client(controller, "iam")
    name = unique("visitor")
    other_iam.create_user(UserName=name)
    visitor = Keys.of(other_iam.create_access_key(UserName=name)).client(controller, "sts")
    arn = new_role(controller, unique("hosted"), trust({"AWS": user_arn(name, other_account_id)}))
    code, status, message = error_of(assume, sts=visitor, arn=arn)
    assert (code, status) == ("AccessDenied", 403)
    assert message.startswith(f"User: {user_arn(name, other_account_id)} is not authorized")
    other_iam.put_user_policy(
        UserName=name, PolicyName="p", PolicyDocument=policy(allow("sts:AssumeRole", arn))
    )
    assert assume(visitor, arn)["AssumedRoleUser"]["Arn"].startswith(
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/"
    )


# -- AssumeRole: parameters --------------------------------------------------------------------


OVER_MAX_SESSION = "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."


@pytest.mark.parametrize(
    ("duration", "max_session", "expected"),
    [
        (
            899,
            3600,
            "1 validation error detected: Value '899' at 'durationSeconds' failed to satisfy"
            " constraint: Member must have value greater than or equal to 900",
        ),
        (3601, 3600, OVER_MAX_SESSION),
        (7201, 7200, OVER_MAX_SESSION),
        (
            43201,
            43200,
            "1 validation error detected: Value '43201' at 'durationSeconds' failed to satisfy"
            " constraint: Member must have value less than or equal to 43200",
        ),
    ],
)
def test_a_duration_out_of_range_is_a_validation_error_not_clamped(
    controller: Controller, duration: int, max_session: int, expected: str
) -> None:
    arn = new_role(
        controller, unique("dur"), trust({"AWS": ROOT_ARN}), MaxSessionDuration=max_session
    )
    sts = Keys.root(controller).client(controller, "sts", parameter_validation=False)
    code, status, message = error_of(assume, sts=sts, arn=arn, DurationSeconds=duration)
    assert (code, status, message) == ("ValidationError", 400, expected)


def test_the_role_s_max_session_duration_is_granted_in_full(controller: Controller) -> None:
    arn = new_role(controller, unique("full"), trust({"AWS": ROOT_ARN}), MaxSessionDuration=7200)
    response = assume(root_sts(controller), arn, DurationSeconds=7200)
    assert close_to(expires_in(response), 7200)


@pytest.mark.parametrize(("duration", "allowed"), [(3600, True), (3601, False)])
def test_role_chaining_is_limited_to_one_hour(
    controller: Controller, duration: int, allowed: bool
) -> None:
    first = new_role(controller, unique("chain1"), trust({"AWS": ROOT_ARN}))
    second = new_role(controller, unique("chain2"), trust({"AWS": first}), MaxSessionDuration=43200)
    chained = Keys.of(assume(root_sts(controller), first)).client(controller, "sts")
    if allowed:
        assert close_to(expires_in(assume(chained, second, DurationSeconds=duration)), duration)
        return
    code, status, message = error_of(assume, sts=chained, arn=second, DurationSeconds=duration)
    assert (code, status) == ("ValidationError", 400)
    assert message == (
        "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by"
        " role chaining."
    )


def test_a_session_policy_that_does_not_allow_is_named_as_aws_names_it(
    controller: Controller,
) -> None:
    """The role allows iam:GetRole, the session policy does not: AWS's "no session policy"."""
    name = unique("scoped")
    arn = new_role(controller, name, trust({"AWS": ROOT_ARN}), policy(allow("iam:GetRole")))
    response = assume(
        root_sts(controller), arn, RoleSessionName="s1", Policy=policy(allow("iam:ListRoles"))
    )
    iam = Keys.of(response).client(controller, "iam")
    code, status, message = error_of(iam.get_role, RoleName=name)
    assert (code, status) == ("AccessDenied", 403)
    assert message == (
        f"User: arn:aws:sts::{ACCOUNT_ID}:assumed-role/{name}/s1 is not authorized to perform:"
        f" iam:GetRole on resource: {arn} because no session policy allows the iam:GetRole action"
    )


def source_identity_trust(principal: str, *actions: str) -> str:
    return policy({"Effect": "Allow", "Principal": {"AWS": principal}, "Action": list(actions)})


def test_a_source_identity_needs_set_source_identity_in_the_trust_policy(
    controller: Controller,
) -> None:
    bare = new_role(controller, unique("si"), trust({"AWS": ROOT_ARN}))
    code, status, message = error_of(
        assume, sts=root_sts(controller), arn=bare, SourceIdentity="alice"
    )
    assert (code, status) == ("AccessDenied", 403)
    assert f"sts:SetSourceIdentity on resource: {bare}" in message
    granted = new_role(
        controller,
        unique("si"),
        source_identity_trust(ROOT_ARN, "sts:AssumeRole", "sts:SetSourceIdentity"),
    )
    assert assume(root_sts(controller), granted, SourceIdentity="alice")["SourceIdentity"] == (
        "alice"
    )


def test_a_role_chain_keeps_its_source_identity_and_refuses_another(
    controller: Controller,
) -> None:
    both = ("sts:AssumeRole", "sts:SetSourceIdentity")
    first = new_role(controller, unique("si1"), source_identity_trust(ROOT_ARN, *both))
    second = new_role(controller, unique("si2"), source_identity_trust(first, *both))
    without = new_role(controller, unique("si3"), source_identity_trust(first, "sts:AssumeRole"))
    session = assume(root_sts(controller), first, SourceIdentity="alice")
    chained = Keys.of(session).client(controller, "sts")
    code, status, message = error_of(assume, sts=chained, arn=second, SourceIdentity="mallory")
    assert (code, status) == ("AccessDenied", 403)
    assert "cannot be changed" in message
    assert assume(chained, second, SourceIdentity="alice")["SourceIdentity"] == "alice"
    assert assume(chained, second)["SourceIdentity"] == "alice"
    code, status, message = error_of(assume, sts=chained, arn=without)
    assert (code, status) == ("AccessDenied", 403)
    assert f"sts:SetSourceIdentity on resource: {without}" in message


@pytest.mark.parametrize("size", [2049, 45_000])
def test_a_session_policy_over_2048_characters_is_a_validation_error(
    controller: Controller, size: int
) -> None:
    arn = new_role(controller, unique("big"), trust({"AWS": ROOT_ARN}))
    statement = allow("s3:GetObject", "arn:aws:s3:::bucket/*")
    document = policy(statement)
    document = document[:-2] + " " * (size - len(document)) + document[-2:]
    assert len(document) == size
    code, status, message = error_of(assume, sts=root_sts(controller), arn=arn, Policy=document)
    assert (code, status) == ("ValidationError", 400)
    assert "Member must have length less than or equal to 2048" in message
    fitting = document[:-2].rstrip() + document[-2:]
    assert assume(root_sts(controller), arn, Policy=fitting)["PackedPolicySize"] > 0


@pytest.mark.parametrize(
    ("session_name", "fragment"),
    [
        ("has space", r"Member must satisfy regular expression pattern: [\w+=,.@-]*"),
        ("semi;colon", r"Member must satisfy regular expression pattern: [\w+=,.@-]*"),
        ("a", "Member must have length greater than or equal to 2"),
        ("x" * 65, "Member must have length less than or equal to 64"),
    ],
)
def test_a_bad_role_session_name_is_a_validation_error(
    controller: Controller, session_name: str, fragment: str
) -> None:
    arn = new_role(controller, unique("sess"), trust({"AWS": ROOT_ARN}))
    sts = Keys.root(controller).client(controller, "sts", parameter_validation=False)
    code, status, message = error_of(assume, sts=sts, arn=arn, RoleSessionName=session_name)
    assert (code, status) == ("ValidationError", 400)
    assert "at 'roleSessionName' failed to satisfy constraint" in message
    assert fragment in message


# -- session tokens ----------------------------------------------------------------------------


def federated_claims(name: str, issued: datetime, lifetime: timedelta) -> SessionClaims:
    access_key_id, secret = new_credentials_ids()
    return SessionClaims(
        access_key_id=access_key_id,
        secret_access_key=secret,
        account_id=ACCOUNT_ID,
        principal_type="federated-user",
        principal_arn=f"arn:aws:sts::{ACCOUNT_ID}:federated-user/{name}",
        user_id=f"{ACCOUNT_ID}:{name}",
        issuer_arn=ROOT_ARN,
        role_id=None,
        session_policy=None,
        source_identity=None,
        chained=False,
        issued=issued,
        expires=issued + lifetime,
    )


def sealed_keys(claims: SessionClaims, token: str) -> Keys:
    return Keys(claims.access_key_id, claims.secret_access_key, token)


def test_a_token_sealed_by_the_controllers_ring_is_accepted(controller: Controller) -> None:
    """The control for the token tests below: a hand-sealed, unexpired token works."""
    ring = load_key_ring(controller.state_dir / "token-keys.json")
    name = unique("sealed")
    claims = federated_claims(name, datetime.now(UTC), timedelta(minutes=15))
    sts = sealed_keys(claims, seal(claims, ring)).client(controller, "sts")
    assert sts.get_caller_identity()["Arn"].endswith(f":federated-user/{name}")


def test_an_expired_token_is_expired_token(controller: Controller) -> None:
    ring = load_key_ring(controller.state_dir / "token-keys.json")
    claims = federated_claims(
        unique("old"), datetime.now(UTC) - timedelta(hours=2), timedelta(hours=1)
    )
    sts = sealed_keys(claims, seal(claims, ring)).client(controller, "sts")
    code, status, message = error_of(sts.get_caller_identity)
    assert (code, status) == ("ExpiredToken", 403)
    assert "expired" in message


def test_a_tampered_token_is_invalid_client_token_id(controller: Controller) -> None:
    keys = Keys.of(root_sts(controller).get_federation_token(Name=unique("tamper")))
    assert keys.session_token is not None
    middle = len(keys.session_token) // 2
    changed = "A" if keys.session_token[middle] != "A" else "B"
    tampered = keys.session_token[:middle] + changed + keys.session_token[middle + 1 :]
    sts = replace(keys, session_token=tampered).client(controller, "sts")
    code, status, _ = error_of(sts.get_caller_identity)
    assert (code, status) == ("InvalidClientTokenId", 403)


def test_a_token_sealed_by_a_foreign_key_ring_is_invalid_client_token_id(
    controller: Controller,
) -> None:
    foreign = new_key_ring(datetime.now(UTC))
    claims = federated_claims(unique("foreign"), datetime.now(UTC), timedelta(minutes=15))
    sts = sealed_keys(claims, seal(claims, foreign)).client(controller, "sts")
    code, status, _ = error_of(sts.get_caller_identity)
    assert (code, status) == ("InvalidClientTokenId", 403)


def test_a_valid_token_with_another_access_key_id_is_invalid_client_token_id(
    controller: Controller,
) -> None:
    keys = Keys.of(root_sts(controller).get_federation_token(Name=unique("swap")))
    other_key_id, _ = new_credentials_ids()
    sts = replace(keys, access_key_id=other_key_id).client(controller, "sts")
    code, status, _ = error_of(sts.get_caller_identity)
    assert (code, status) == ("InvalidClientTokenId", 403)


@pytest.fixture
def own_controller(tmp_path: Path) -> Iterator[Controller]:
    running = start_controller(tmp_path / "state")
    try:
        yield running
    finally:
        stop_controller(running)


def test_tokens_survive_a_key_rotation_and_new_ones_use_the_new_key(
    own_controller: Controller,
) -> None:
    controller = own_controller
    ring_path = controller.state_dir / "token-keys.json"
    sts = root_sts(controller)
    before_name = unique("before")
    before = Keys.of(sts.get_federation_token(Name=before_name))
    assert before.session_token is not None
    old_key = load_key_ring(ring_path).active_id
    assert token_key_id(before.session_token) == old_key

    subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "rotate-token-key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    new_ring = load_key_ring(ring_path)
    assert new_ring.active_id != old_key

    # Sealed with the new key before the controller's periodic re-read: it must re-read the
    # ring when it meets the unknown key id.
    name = unique("newkey")
    claims = federated_claims(name, datetime.now(UTC), timedelta(minutes=15))
    fresh = sealed_keys(claims, seal(claims, new_ring)).client(controller, "sts")
    assert fresh.get_caller_identity()["Arn"].endswith(f":federated-user/{name}")

    after = Keys.of(sts.get_federation_token(Name=unique("after")))
    assert after.session_token is not None
    assert token_key_id(after.session_token) == new_ring.active_id
    old = before.client(controller, "sts").get_caller_identity()
    assert old["Arn"].endswith(f":federated-user/{before_name}")


def test_no_issued_secret_reaches_the_controller_log(controller: Controller) -> None:
    assert_no_issued_secret_in_log(controller)
