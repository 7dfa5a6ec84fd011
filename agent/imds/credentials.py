"""One set of instance role credentials, as the controller issues it and the IMDS serves it.

The controller's node API answers ``POST /v1/instances/{id}/credentials`` with
``AccessKeyId``, ``SecretAccessKey``, ``Token``, ``Expiration``, ``RoleArn``,
``InstanceProfileArn``, ``InstanceProfileId`` and ``AccountId`` (DESIGN.md, "Contracts").
:meth:`CredentialSet.from_node_api` checks that shape; the agent adds ``LastUpdated``, the moment
it received the set. Timestamps on the wire are exactly ``YYYY-MM-DDTHH:MM:SSZ`` (spec/imds.md
line 21): :func:`format_timestamp` is the only way this package writes one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
"""The one timestamp layout SDKs parse (botocore uses exactly this ``strptime`` format)."""


def format_timestamp(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ``, fractions dropped (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from ``YYYY-MM-DDTHH:MM:SSZ`` or another ISO 8601 form.

    Raises ``ValueError`` for anything else. A time without an offset is taken as UTC.
    """
    try:
        moment = datetime.strptime(text, TIMESTAMP_FORMAT)
    except ValueError:
        moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_EXPIRATION_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_ROLE_ARN = re.compile(r"arn:[^:]+:iam::[^:]*:role/(?:[^:]*/)?(?P<name>[^/:]+)")


class MalformedCredentials(ValueError):
    """The controller's credentials answer is not the node API's shape; says which field."""


def _text(body: Mapping[str, object], key: str) -> str:
    if key not in body:
        raise MalformedCredentials(f"{key}: missing from the controller's answer")
    value = body[key]
    if not isinstance(value, str) or not value:
        raise MalformedCredentials(
            f"{key}: must be a non-empty string (got {type(value).__name__})"
        )
    return value


def parse_expiration(text: str) -> datetime:
    """An ``Expiration`` as the node API sends it: exactly ``YYYY-MM-DDTHH:MM:SSZ``, UTC."""
    if not _EXPIRATION_SHAPE.fullmatch(text):
        raise MalformedCredentials(f"Expiration: must be YYYY-MM-DDTHH:MM:SSZ (got {text!r})")
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError as error:
        raise MalformedCredentials(f"Expiration: not a date and time (got {text!r})") from error


@dataclass(frozen=True)
class CredentialSet:
    """Role credentials for one instance; ``repr`` never shows the secret or the token."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    token: str = field(repr=False)
    expiration: datetime
    last_updated: datetime
    role_arn: str = ""
    instance_profile_arn: str = ""
    instance_profile_id: str = ""
    account_id: str = ""

    def __post_init__(self) -> None:
        # A naive datetime would be read as local time by ``timestamp()``: pin both to UTC.
        for name in ("expiration", "last_updated"):
            moment: datetime = getattr(self, name)
            if moment.tzinfo is None:
                object.__setattr__(self, name, moment.replace(tzinfo=UTC))

    @property
    def role_name(self) -> str:
        """The role's name, the last segment of its ARN (the IMDS credential path uses it)."""
        match = _ROLE_ARN.fullmatch(self.role_arn)
        return match["name"] if match else self.role_arn.rsplit("/", 1)[-1]

    @classmethod
    def from_node_api(cls, body: object, now: datetime) -> CredentialSet:
        """The set in a node API answer (``POST /v1/instances/ID/credentials``), obtained at `now`.

        Unknown fields are ignored; a missing or malformed one raises `MalformedCredentials`
        naming it. ``Expiration`` must be exactly ``YYYY-MM-DDTHH:MM:SSZ`` (spec line 21).
        """
        if now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware (got {now!r})")
        if not isinstance(body, Mapping):
            raise MalformedCredentials(
                f"the controller's answer must be a JSON object (got {type(body).__name__})"
            )
        role_arn = _text(body, "RoleArn")
        if not _ROLE_ARN.fullmatch(role_arn):
            raise MalformedCredentials(f"RoleArn: not a role ARN (got {role_arn!r})")
        return cls(
            access_key_id=_text(body, "AccessKeyId"),
            secret_access_key=_text(body, "SecretAccessKey"),
            token=_text(body, "Token"),
            expiration=parse_expiration(_text(body, "Expiration")),
            last_updated=now.astimezone(UTC).replace(microsecond=0),
            role_arn=role_arn,
            instance_profile_arn=_text(body, "InstanceProfileArn"),
            instance_profile_id=_text(body, "InstanceProfileId"),
            account_id=_text(body, "AccountId"),
        )

    def expired_at(self, now: float) -> bool:
        """Whether the set is past its ``Expiration`` at ``now`` (POSIX seconds)."""
        return not now < self.expiration.timestamp()
