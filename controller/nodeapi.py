"""The node API: what a node's agent asks the controller, over TLS with client certificates.

- ``GET /v1/assignments?since=REV&wait=SECONDS``: the instances placed on the calling node, at
  once when its revision is newer than ``since``, else when it changes or ``wait`` runs out.
- ``POST /v1/instances/{id}/credentials``: fresh role credentials for an instance on that node.

The node is the certificate's subject; its serial must be the one recorded at enrollment (a
re-enrolled or retired node's old certificate is refused). JSON in and out, each message built
as its `common.nodemessages` type and written by its serializer. See DESIGN.md.

The port is `common.http11`'s protocol: `NodeApi.answer` takes a plain request and gives a
plain answer, or a Deferred of one (the long poll; credentials once audited), which the
protocol cancels if the node hangs up first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_to_bytes

from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from common.http11 import Http11Factory, Http11Protocol, Request, Response
from common.nodemessages import (
    MAX_REVISION,
    AssignmentsAnswer,
    CredentialsAnswer,
    ErrorAnswer,
)
from controller.actions import RoleUseRecorder
from controller.api import DEFAULT_MAX_BODY, body_refusal
from controller.assignments import AssignmentHub
from controller.audit import GroupCommitLog
from controller.authorize import parsed
from controller.ec2.guest import assignment
from controller.metrics import ControllerMetrics
from controller.policy.document import PolicyKind
from controller.policy.evaluate import RequestContext, evaluate_trust, time_keys
from controller.sessions import Sessions
from controller.store.base import Store, StoreError, Transaction
from controller.store.records import REGION, Instance, InstanceProfile, Node, Role
from controller.tokens import SessionClaims, new_credentials_ids
from controller.xmlout import format_time

log = Logger(namespace="rolecall.nodeapi")

MAX_WAIT_SECONDS = 300.0
DEFAULT_CREDENTIAL_SECONDS = 6 * 3600
AUDIT_UNAVAILABLE = ErrorAnswer("AuditUnavailable", "credentials cannot be audited now")
STORE_UNAVAILABLE = ErrorAnswer("StoreUnavailable", "try again")
#: A node's last contact is written when the stored one is older than this: not on every call,
#: which would make every node API request a write (and empty every controller's read cache).
#: rolecall_node_last_contact_seconds is that much coarser; its alert waits for 360 s.
CONTACT_RESOLUTION_SECONDS = 15


def contact_is_stale(last_contact: str | None, now: datetime) -> bool:
    """Whether a node's stored last contact should be brought up to `now`."""
    if last_contact is None:
        return True
    try:
        stored = datetime.fromisoformat(last_contact)
    except ValueError:
        return True
    return abs((now - stored).total_seconds()) >= CONTACT_RESOLUTION_SECONDS


class NodeApiError(Exception):
    """An answer other than 200: an HTTP status and a message for the agent's log."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class NodeApiSettings:
    credential_seconds: int = DEFAULT_CREDENTIAL_SECONDS


class NodeApi:
    """The node API's handler: a request and its connection (whose TLS client certificate names
    the node) in, an answer out, now or later."""

    def __init__(
        self,
        store: Store,
        hub: AssignmentHub,
        sessions: Sessions,
        audit: GroupCommitLog,
        clock: IReactorTime,
        settings: NodeApiSettings | None = None,
        metrics: ControllerMetrics | None = None,
        last_used: RoleUseRecorder | None = None,
    ) -> None:
        self._store = store
        self._last_used = last_used
        self._hub = hub
        self._sessions = sessions
        self._audit = audit
        self._clock = clock
        self._settings = settings or NodeApiSettings()
        self._metrics = metrics or ControllerMetrics(CollectorRegistry())

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), UTC).replace(microsecond=0)

    def answer(self, request: Request, connection: Http11Protocol) -> Response | Deferred[Response]:
        path, _, query = request.uri.partition(b"?")
        parts = path.decode("ascii", "replace").strip("/").split("/")
        if request.method == b"GET" and parts == ["v1", "assignments"]:
            endpoint = "assignments"
        elif (
            request.method == b"POST"
            and len(parts) == 4
            and parts[:2] == ["v1", "instances"]
            and parts[3] == "credentials"
        ):
            endpoint = "credentials"
        else:
            endpoint = "other"
        answer: Response | Deferred[Response]
        try:
            node = self._node(connection)
            if endpoint == "assignments":
                answer = self._assignments(query, node)
            elif endpoint == "credentials":
                answer = self._issue(node, parts[2])
            else:
                raise NodeApiError(404, "NotFound", "no such node API endpoint")
        except NodeApiError as error:
            answer = _json(error.status, ErrorAnswer(error.code, error.message))
        except StoreError as error:
            log.error("node API store failure: {error}", error=str(error))
            answer = _json(503, STORE_UNAVAILABLE)
        # Counted when answered (a long poll, later); a poll the node hangs up on is not.
        if isinstance(answer, Response):
            return self._counted(answer, endpoint)
        return answer.addCallback(self._counted, endpoint)

    def _counted(self, answer: Response, endpoint: str) -> Response:
        self._metrics.node_api_request(endpoint, answer.status)
        return answer

    def _node(self, connection: Http11Protocol) -> Node:
        certificate = connection.peer_certificate()
        if certificate is None:
            raise NodeApiError(403, "NoCertificate", "a node certificate is required")
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        serial = certificate.serial_number
        now = self._now()

        def enrolled(tx: Transaction) -> Node | None:
            node = tx.get_node(name)
            if (
                node is None
                or node.retired is not None
                or int(node.certificate_serial, 16) != serial
            ):
                return None
            if contact_is_stale(node.last_contact, now):
                node = replace(node, last_contact=format_time(now))
                tx.update_node(node)
            return node

        node = self._store.run(enrolled)
        if node is None:
            log.warn("refused node certificate for {name!r}", name=name)
            raise NodeApiError(403, "UnknownNode", f"node {name!r} is not enrolled")
        return node

    # assignments

    def _assignments(self, query: bytes, node: Node) -> Response | Deferred[Response]:
        """At once when the node's revision is newer than ``since`` (or ``wait`` is 0), else
        when it changes or ``wait`` runs out. If the node hangs up first, the protocol cancels
        the wait (and the hub forgets it)."""
        arguments = _query_arguments(query)
        since = _int_arg(arguments, b"since", -1, -1, MAX_REVISION)
        wait = float(_int_arg(arguments, b"wait", 0, 0, int(MAX_WAIT_SECONDS)))
        if node.revision > since or wait == 0:
            return _json(200, self._snapshot(node.name))
        return self._wait(node.name, since, self._clock.seconds() + wait)

    def _wait(self, node_name: str, since: int, deadline: float) -> Deferred[Response]:
        """Answer when the node's revision passes ``since``, or at ``deadline``. A wake-up that
        finds no newer revision (another controller's notice of a change this poll has seen
        already, or every poll woken after the database listener reconnected) waits on."""
        remaining = max(0.0, deadline - self._clock.seconds())

        def woken(changed: bool) -> Response | Deferred[Response]:
            try:
                answer = self._snapshot(node_name)
            except StoreError as error:
                log.error("node API store failure: {error}", error=str(error))
                return _json(503, STORE_UNAVAILABLE)
            if (
                changed
                and answer.revision <= since
                and not self._hub.stopped
                and self._clock.seconds() < deadline
            ):
                return self._wait(node_name, since, deadline)
            return _json(200, answer)

        return self._hub.wait(node_name, remaining).addCallback(woken)

    def _snapshot(self, node_name: str) -> AssignmentsAnswer:
        def read(tx: Transaction) -> AssignmentsAnswer:
            node = tx.get_node(node_name)
            instances = tx.list_node_instances(node_name)
            answer = AssignmentsAnswer(
                node.revision if node else 0,
                tuple(assignment(tx, instance) for instance in instances),
            )
            for instance in instances:
                if instance.state == "pending":  # its node knows it now: the VM can start
                    tx.update_instance(replace(instance, state="running"))
            return answer

        return self._store.run(read)

    # credentials

    def _issue(self, node: Node, instance_id: str) -> Deferred[Response]:
        """Answer with fresh credentials once their audit record is durable (committed with
        those of concurrent requests: see `GroupCommitLog.append`). A node that hangs up meanwhile
        cancels only its answer: the record is still written, and the issuance logged."""
        body, record, role_id = self._credentials(node, instance_id)
        answered: Deferred[Response] = Deferred()

        def answer(status: int, answer_body: CredentialsAnswer | ErrorAnswer) -> None:
            if not answered.called:  # else cancelled: the node hung up
                answered.callback(_json(status, answer_body))

        def written(_: None) -> None:
            self._metrics.credentials_issued("instance")
            if self._last_used is not None:  # RoleLastUsed: in RoleCall's one region
                self._last_used.record(role_id, self._now(), REGION)
            log.info(
                "issued {access_key_id} for {instance} on {node} as {role}",
                access_key_id=body.access_key_id,
                instance=instance_id,
                node=node.name,
                role=body.role_arn,
            )
            answer(200, body)

        def not_written(failure: Failure) -> None:
            self._metrics.audit_log_write_failed()
            if isinstance(failure.value, OSError):
                log.error("cannot write the audit log: {error}", error=failure.value.strerror)
            elif isinstance(failure.value, StoreError):  # the audit table (PostgreSQL)
                log.error("cannot write the audit log: {error}", error=str(failure.value))
            else:
                log.failure("cannot write the audit log", failure)
            answer(503, AUDIT_UNAVAILABLE)

        self._audit.append(record).addCallbacks(written, not_written).addErrback(
            lambda failure: log.failure("answering a credentials request failed", failure)
        )
        return answered

    def _credentials(
        self, node: Node, instance_id: str
    ) -> tuple[CredentialsAnswer, Mapping[str, object], str]:
        """Fresh credentials for `instance_id` if it may have them, their audit record and
        the id of their role."""
        now = self._now()

        def read(tx: Transaction) -> tuple[Instance, InstanceProfile, Role]:
            instance = tx.get_instance(instance_id)
            if (
                instance is None
                or instance.node_name != node.name
                or instance.state == "terminated"
            ):
                log.warn(
                    "node {node} asked for credentials of {instance}, which is not placed on it",
                    node=node.name,
                    instance=instance_id,
                )
                raise NodeApiError(
                    403, "NotYourInstance", f"{instance_id} is not placed on this node"
                )
            profile = (
                tx.get_instance_profile_by_id(instance.profile_id) if instance.profile_id else None
            )
            role = tx.get_role_by_id(profile.role_id) if profile and profile.role_id else None
            if profile is None or role is None:
                raise NodeApiError(
                    404, "NoRole", f"{instance_id} has no instance profile with a role"
                )
            trust = evaluate_trust(
                parsed(role.assume_role_policy, PolicyKind.TRUST),
                RequestContext("sts:AssumeRole", role.arn, "", "", time_keys(now)),
                service="ec2.amazonaws.com",
            )
            if not trust.allowed:
                raise NodeApiError(
                    409,
                    "RoleNotTrusted",
                    f"the trust policy of {role.arn} does not let ec2.amazonaws.com assume it",
                )
            return instance, profile, role

        instance, profile, role = self._store.run(read)
        access_key_id, secret = new_credentials_ids()
        claims = SessionClaims(
            access_key_id=access_key_id,
            secret_access_key=secret,
            account_id=role.account_id,
            principal_type="instance",
            principal_arn=f"arn:aws:sts::{role.account_id}:assumed-role/{role.name}/{instance_id}",
            user_id=f"{role.role_id}:{instance_id}",
            issuer_arn=f"arn:aws:ec2:{REGION}:{instance.account_id}:instance/{instance_id}",
            role_id=role.role_id,
            session_policy=None,
            source_identity=None,
            chained=False,
            issued=now,
            expires=now + timedelta(seconds=self._settings.credential_seconds),
            extra={"instance_id": instance_id, "node": node.name},
        )
        token = self._sessions.seal(claims)
        record = {
            "time": format_time(now),
            "event": "instance-credentials",
            "node": node.name,
            "instance_id": instance_id,
            "account_id": role.account_id,
            "role_arn": role.arn,
            "access_key_id": access_key_id,
            "expiration": format_time(claims.expires),
        }
        body = CredentialsAnswer(
            access_key_id=access_key_id,
            secret_access_key=secret,
            token=token,
            expiration=claims.expires,
            role_arn=role.arn,
            instance_profile_arn=profile.arn,
            instance_profile_id=profile.profile_id,
            account_id=role.account_id,
        )
        return body, record, role.role_id


_INTEGER = re.compile(rb"-?[0-9]{1,19}")


def _query_arguments(query: bytes) -> dict[bytes, list[bytes]]:
    """The query's arguments as bytes, read as twisted.web read them for this API before: ``&``
    or ``;`` between them, ``+`` for a space, percent-escapes undone to bytes (never decoded
    as text), and a name without ``=`` left out."""
    arguments: dict[bytes, list[bytes]] = {}
    for item in re.split(rb"[&;]", query):
        name, equals, value = item.partition(b"=")
        if equals:
            arguments.setdefault(unquote_to_bytes(name.replace(b"+", b" ")), []).append(
                unquote_to_bytes(value.replace(b"+", b" "))
            )
    return arguments


def _int_arg(
    arguments: Mapping[bytes, list[bytes]], name: bytes, default: int, minimum: int, maximum: int
) -> int:
    """An integer query argument within ``[minimum, maximum]``: anything else is a 400 that
    names the argument and its range (never an exception from ``int``/``float``)."""
    values = arguments.get(name)
    if not values:
        return default
    raw = values[0]
    if len(values) > 1 or not _INTEGER.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise NodeApiError(
            400,
            "BadParameter",
            f"{name.decode()} must be one integer from {minimum} to {maximum}",
        )
    return int(raw)


def _json(status: int, body: AssignmentsAnswer | CredentialsAnswer | ErrorAnswer) -> Response:
    return Response(
        status,
        ((b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")),
        json.dumps(body.to_wire()).encode("utf-8"),
    )


# -- the node API's listener ----------------------------------------------------------------


def node_api_factory(
    api: NodeApi, clock: IReactorTime, max_body: int = DEFAULT_MAX_BODY
) -> Http11Factory:
    """The node API's port (TLS is the listener's): `api` answers; a body over ``max_body`` is
    refused with the API's 413 error XML, then the connection is closed."""

    def refusal() -> bytes:
        return body_refusal(max_body)  # each with a RequestId of its own

    return Http11Factory(api.answer, clock, refusal=refusal, max_body=max_body)
