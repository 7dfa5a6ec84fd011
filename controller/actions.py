"""What an API action is (service, name, input, resource, handler) and what a handler sees."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from controller.query import Struct
from controller.store.base import Transaction
from controller.tokens import SessionClaims

if TYPE_CHECKING:  # controller.ec2's handlers import this module
    from controller.ec2.guest import DocumentSigner
    from controller.ec2.limits import Ec2Limits

#: The principal types of aws:PrincipalType, by caller kind.
PRINCIPAL_TYPES = {
    "root": "Account",
    "user": "User",
    "assumed-role": "AssumedRole",
    "federated-user": "FederatedUser",
    "session": "User",
}


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of a request.

    ``kind`` is root | user (long-term keys) | assumed-role | federated-user | session (temporary
    credentials: AssumeRole, GetFederationToken, GetSessionToken).
    """

    account_id: str
    arn: str
    access_key_id: str
    user_id: str
    kind: str
    #: The IAM user behind a user key, a GetSessionToken session or a federation (None: root).
    user_name: str | None = None
    #: The id (AIDA…) of that user, so a session dies with its user even if the name is reused.
    issuer_user_id: str | None = None
    #: The role behind an assumed-role session.
    role_id: str | None = None
    #: The session policy of temporary credentials, if one was passed.
    session_policy: str | None = None
    #: The long-term identity that started this chain of credentials (its own ARN if long-term).
    issuer_arn: str = ""
    source_identity: str | None = None
    #: The instance whose role credentials these are (ec2:SourceInstanceARN).
    source_instance_arn: str | None = None
    #: When temporary credentials were issued and expire.
    issued: datetime | None = None
    expires: datetime | None = None

    @property
    def temporary(self) -> bool:
        return self.kind in ("assumed-role", "federated-user", "session")


@dataclass(frozen=True)
class RequestFacts:
    """What the transport says about a request, for condition keys."""

    source_ip: str = "127.0.0.1"
    secure_transport: bool = False
    region: str = "us-east-1"


class TokenSealer(Protocol):
    """Seals a session's claims into its token (`controller.sessions.Sessions`)."""

    def seal(self, claims: SessionClaims) -> str: ...


class IssuedCounter(Protocol):
    """Counts issued credentials by kind (`controller.metrics.ControllerMetrics`)."""

    def credentials_issued(self, kind: str) -> None: ...


class RoleUseRecorder(Protocol):
    """Records that a role was used, to be written later (`controller.lastused`)."""

    def record(self, role_id: str, when: datetime, region: str) -> None: ...


class AssignmentWaker(Protocol):
    """Wakes the long polls waiting for a node's assignments (`AssignmentHub`)."""

    def changed(self, node: str) -> None: ...


@dataclass(frozen=True)
class Services:
    """The shared components handlers use; none holds a request's state. A handler that needs
    one that is absent (a test that did not give it) fails on an assert, never silently."""

    sessions: TokenSealer | None = None
    metrics: IssuedCounter | None = None
    assignments: AssignmentWaker | None = None
    #: None: the defaults (`Ec2Limits()`).
    ec2_limits: Ec2Limits | None = None
    #: Signs instance identity documents at launch; None: they are served unsigned.
    identity_signer: DocumentSigner | None = None
    #: Records roles' last use (RoleLastUsed); None: not recorded (tests that do not look).
    last_used: RoleUseRecorder | None = None


@dataclass(frozen=True)
class Context:
    """Everything a handler may use: one store transaction, the caller, the time, the services."""

    tx: Transaction
    caller: Caller
    now: datetime
    facts: RequestFacts = field(default_factory=RequestFacts)
    #: Shared components handlers need (the token sealer, metrics, limits).
    services: Services = field(default_factory=Services)
    #: Called once the transaction has committed (to wake nodes waiting for assignments).
    on_commit: list[Callable[[], None]] = field(default_factory=list)

    @property
    def account_id(self) -> str:
        return self.caller.account_id


Result = Mapping[str, Any] | None
Handler = Callable[[Context, dict[str, Any]], Result]
#: The ARN an action acts on, from the request (``*`` when it has none), or the ARNs when it acts
#: on several (TerminateInstances): each is authorized, and one refusal refuses the request.
ResourceOf = Callable[[Context, dict[str, Any]], str | tuple[str, ...]]
#: The action's own condition keys (iam:PermissionsBoundary…), from the request and what it acts
#: on; a key the request has no value for is left out, so that ``Null`` conditions see it absent.
KeysOf = Callable[[Context, dict[str, Any]], Mapping[str, tuple[str, ...]]]


def no_resource(context: Context, params: dict[str, Any]) -> str:
    return "*"


@dataclass(frozen=True)
class Action:
    service: str
    name: str
    input: Struct
    handler: Handler
    #: The resource for authorization; None when the handler authorizes itself (AssumeRole).
    resource: ResourceOf | None = no_resource
    #: Condition keys of this action beyond the global ones; None: it has none.
    condition_keys: KeysOf | None = None

    @property
    def iam_action(self) -> str:
        """The action as policies name it, e.g. ``iam:CreateRole``."""
        return f"{self.service}:{self.name}"


class Registry:
    """The actions of the services one endpoint serves, looked up by (service, action)."""

    def __init__(self, *others: Registry) -> None:
        self._actions: dict[tuple[str, str], Action] = {}
        for other in others:
            self._actions.update(other._actions)

    def action(
        self,
        service: str,
        name: str,
        input: Struct,
        resource: ResourceOf | None = no_resource,
        condition_keys: KeysOf | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._actions[(service, name)] = Action(
                service, name, input, handler, resource, condition_keys
            )
            return handler

        return register

    def get(self, service: str, name: str) -> Action | None:
        return self._actions.get((service, name))

    def names(self, service: str) -> list[str]:
        return sorted(name for (svc, name) in self._actions if svc == service)

    def services(self) -> set[str]:
        return {svc for (svc, _) in self._actions}

    def __iter__(self) -> Iterator[Action]:
        return iter(self._actions.values())
