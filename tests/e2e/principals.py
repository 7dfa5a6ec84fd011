"""Helpers for the end-to-end STS and authorization tests: policies, principals, clients.

Every client built here records its secret and session token, so each module can check at its
end that none of them reached the controller's log.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.conftest import ACCOUNT_ID, Controller

#: Secrets and session tokens handed to clients, by controller URL.
ISSUED_SECRETS: defaultdict[str, set[str]] = defaultdict(set)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    """(code, HTTP status, message) of a call that must fail."""
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], resource: str | list[str] = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: str | list[str], resource: str | list[str] = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def trust(principal: dict[str, Any], condition: dict[str, Any] | None = None) -> str:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": principal,
        "Action": "sts:AssumeRole",
    }
    if condition is not None:
        statement["Condition"] = condition
    return policy(statement)


def role_arn(name: str, account_id: str = ACCOUNT_ID) -> str:
    return f"arn:aws:iam::{account_id}:role/{name}"


def user_arn(name: str, account_id: str = ACCOUNT_ID) -> str:
    return f"arn:aws:iam::{account_id}:user/{name}"


@dataclass(frozen=True)
class Keys:
    """A set of credentials: long-term (no token) or temporary."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    @classmethod
    def of(cls, response: dict[str, Any]) -> Keys:
        """The credentials in an STS response or in CreateAccessKey's."""
        found = response.get("Credentials") or response["AccessKey"]
        return cls(found["AccessKeyId"], found["SecretAccessKey"], found.get("SessionToken"))

    @classmethod
    def root(cls, controller: Controller) -> Keys:
        return cls(controller.access_key_id, controller.secret_access_key)

    def remember(self, controller: Controller) -> Keys:
        """Note the secrets, for the check that none reaches the log."""
        ISSUED_SECRETS[controller.url].add(self.secret_access_key)
        if self.session_token is not None:
            ISSUED_SECRETS[controller.url].add(self.session_token)
        return self

    def client(self, controller: Controller, service: str = "iam", **config: Any) -> Any:
        self.remember(controller)
        return boto3.client(
            service,
            endpoint_url=controller.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            config=Config(retries={"max_attempts": 1}, **config),
        )


def new_user(controller: Controller, name: str, *documents: str) -> Keys:
    """A user with one access key and the given inline policies (named p1, p2, ...)."""
    iam = controller.client("iam")
    iam.create_user(UserName=name)
    for index, document in enumerate(documents, start=1):
        iam.put_user_policy(UserName=name, PolicyName=f"p{index}", PolicyDocument=document)
    return Keys.of(iam.create_access_key(UserName=name))


def new_role(
    controller: Controller, name: str, trust_policy: str, *documents: str, **extra: Any
) -> str:
    """A role with the given trust and inline policies (named p1, p2, ...); its ARN."""
    iam = controller.client("iam")
    arn: str = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust_policy, **extra)[
        "Role"
    ]["Arn"]
    for index, document in enumerate(documents, start=1):
        iam.put_role_policy(RoleName=name, PolicyName=f"p{index}", PolicyDocument=document)
    return arn


def assert_no_issued_secret_in_log(controller: Controller) -> None:
    """No secret or token given to a client of this controller is in its log.

    It issues some itself (a user's key, session and federation tokens, used for a success and
    a denial each) so that it checks something even when run alone. A last request with a fresh,
    unknown key id marks the end: once its line is in the output, every earlier request's is.
    """
    name = unique("logged")
    user = new_user(controller, name, policy(allow("sts:GetFederationToken")))
    user_sts = user.client(controller, "sts")
    issued = [
        Keys.of(user_sts.get_session_token()),
        Keys.of(user_sts.get_federation_token(Name=name[:32])),
        Keys.of(Keys.root(controller).client(controller, "sts").get_federation_token(Name="log")),
    ]
    for keys in [user, *issued]:
        keys.client(controller, "sts").get_caller_identity()
        error_of(keys.client(controller, "iam").create_user, UserName=unique("never"))
    marker = "AKIA" + uuid.uuid4().hex[:16].upper()
    unknown = boto3.client(
        "sts",
        endpoint_url=controller.url,
        region_name="us-east-1",
        aws_access_key_id=marker,
        aws_secret_access_key="not-a-secret-of-this-controller",
        config=Config(retries={"max_attempts": 1}),
    )
    assert error_of(unknown.get_caller_identity)[0] == "InvalidClientTokenId"
    deadline = time.monotonic() + 10
    while not any(marker in line for line in list(controller.output)):
        assert time.monotonic() < deadline, "the controller did not log the marker request"
        time.sleep(0.05)
    log = "".join(controller.output)
    secrets = ISSUED_SECRETS[controller.url] | {controller.secret_access_key}
    assert len(secrets) >= 8
    leaked = sorted(secret[:6] + "..." for secret in secrets if secret in log)
    assert not leaked, f"secrets reached the controller's log: {leaked}"
