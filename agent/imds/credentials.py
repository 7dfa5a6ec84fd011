"""One set of instance role credentials, as the agent holds it and the IMDS serves it.

The controller's node API answers ``POST /v1/instances/{id}/credentials`` with a
`common.nodemessages.CredentialsAnswer` (DESIGN.md, "Contracts"), checked once on arrival by
its parser. :class:`CredentialSet` is that answer plus ``LastUpdated``, the moment the agent
received it: the agent's own record, not the controller's word, so it is a type of its own
that the wire message converts into (:meth:`CredentialSet.from_answer`). Timestamps are exactly
``YYYY-MM-DDTHH:MM:SSZ`` (spec/imds.md line 21): :func:`common.timestamps.format_timestamp` is
the only way the agent writes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from common.nodemessages import (
    ROLE_ARN,
    CredentialsAnswer,
    MessageError,
    parse_credentials,
)
from common.timestamps import parse_exact_timestamp

MalformedCredentials = MessageError
"""The controller's credentials answer is not the node API's shape; says which field. The node
API's one error type, under the name the agent's credential machine gives the failure."""


def parse_expiration(text: str) -> datetime:
    """An ``Expiration`` as the node API sends it: exactly ``YYYY-MM-DDTHH:MM:SSZ``, UTC."""
    try:
        return parse_exact_timestamp(text)
    except ValueError as error:
        raise MalformedCredentials("Expiration", str(error)) from None


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
        match = ROLE_ARN.fullmatch(self.role_arn)
        return match["name"] if match else self.role_arn.rsplit("/", 1)[-1]

    @classmethod
    def from_answer(cls, answer: CredentialsAnswer, now: datetime) -> CredentialSet:
        """The set of a credentials answer received at `now` (timezone-aware)."""
        if now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware (got {now!r})")
        return cls(
            access_key_id=answer.access_key_id,
            secret_access_key=answer.secret_access_key,
            token=answer.token,
            expiration=answer.expiration,
            last_updated=now.astimezone(UTC).replace(microsecond=0),
            role_arn=answer.role_arn,
            instance_profile_arn=answer.instance_profile_arn,
            instance_profile_id=answer.instance_profile_id,
            account_id=answer.account_id,
        )

    @classmethod
    def from_node_api(cls, body: object, now: datetime) -> CredentialSet:
        """The set in a node API answer (``POST /v1/instances/ID/credentials``, as JSON
        decoded), obtained at `now`: `parse_credentials`, then `from_answer`.

        Unknown fields are ignored; a missing or malformed one raises `MalformedCredentials`
        naming it. ``Expiration`` must be exactly ``YYYY-MM-DDTHH:MM:SSZ`` (spec line 21).
        """
        if now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware (got {now!r})")
        return cls.from_answer(parse_credentials(body), now)

    def answer(self) -> CredentialsAnswer:
        """The set as the controller sent it (``LastUpdated`` is not part of it)."""
        return CredentialsAnswer(
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            token=self.token,
            expiration=self.expiration,
            role_arn=self.role_arn,
            instance_profile_arn=self.instance_profile_arn,
            instance_profile_id=self.instance_profile_id,
            account_id=self.account_id,
        )

    def expired_at(self, now: float) -> bool:
        """Whether the set is past its ``Expiration`` at ``now`` (POSIX seconds)."""
        return not now < self.expiration.timestamp()
