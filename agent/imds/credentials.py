"""One set of instance role credentials, as the controller issues it and the IMDS serves it.

The controller's node API answers ``POST /v1/instances/{id}/credentials`` with
``AccessKeyId``, ``SecretAccessKey``, ``Token``, ``Expiration``, ``RoleArn``,
``InstanceProfileArn``, ``InstanceProfileId`` and ``AccountId`` (DESIGN.md, "Contracts").
:meth:`CredentialSet.from_controller` checks that shape; the agent adds ``LastUpdated``, the moment
it received the set. Timestamps on the wire are exactly ``YYYY-MM-DDTHH:MM:SSZ`` (spec/imds.md
line 21): :func:`format_timestamp` is the only way this package writes one.
"""

from __future__ import annotations

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

    @classmethod
    def from_controller(cls, body: Mapping[str, object], received_at: datetime) -> CredentialSet:
        """Check the node API's credentials JSON (already decoded) and stamp ``LastUpdated``.

        Raises ``ValueError`` naming the first missing or malformed key.
        """

        def text(key: str, *, required: bool = True) -> str:
            value = body.get(key)
            if value is None and not required:
                return ""
            if not isinstance(value, str) or (required and not value):
                raise ValueError(f"credentials field {key!r} must be a non-empty string")
            return value

        expiration_text = text("Expiration")
        try:
            expiration = parse_timestamp(expiration_text)
        except ValueError:
            raise ValueError(
                f"credentials field 'Expiration' is not a timestamp: {expiration_text!r}"
            ) from None
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=UTC)
        return cls(
            access_key_id=text("AccessKeyId"),
            secret_access_key=text("SecretAccessKey"),
            token=text("Token"),
            expiration=expiration,
            last_updated=received_at.astimezone(UTC),
            role_arn=text("RoleArn", required=False),
            instance_profile_arn=text("InstanceProfileArn", required=False),
            instance_profile_id=text("InstanceProfileId", required=False),
            account_id=text("AccountId", required=False),
        )

    def expired_at(self, now: float) -> bool:
        """Whether the set is past its ``Expiration`` at ``now`` (POSIX seconds)."""
        return not now < self.expiration.timestamp()
