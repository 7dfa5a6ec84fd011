"""The node API: what a node's agent asks the controller, over TLS with client certificates.

- ``GET /v1/assignments?since=REV&wait=SECONDS``: the instances placed on the calling node, at
  once when its revision is newer than ``since``, else when it changes or ``wait`` runs out.
- ``POST /v1/instances/{id}/credentials``: fresh role credentials for an instance on that node.

The node is the certificate's subject; its serial must be the one recorded at enrollment (a
re-enrolled or retired node's old certificate is refused). JSON in and out, each message built
as its `common.nodemessages` type and written by its serializer. See DESIGN.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from common.bodylimit import BodyLimit
from common.nodemessages import (
    MAX_REVISION,
    AssignmentsAnswer,
    CredentialsAnswer,
    ErrorAnswer,
)
from controller.api import DEFAULT_MAX_BODY, body_refusal
from controller.assignments import AssignmentHub
from controller.audit import AuditLog
from controller.authorize import parsed
from controller.ec2.guest import assignment
from controller.metrics import ControllerMetrics
from controller.policy.document import PolicyKind
from controller.policy.evaluate import RequestContext, evaluate_trust, time_keys
from controller.sessions import Sessions
from controller.store.base import Store, StoreError
from controller.store.records import REGION, Node
from controller.tokens import SessionClaims, new_credentials_ids
from controller.xmlout import format_time

log = Logger(namespace="rolecall.nodeapi")

MAX_WAIT_SECONDS = 300.0
DEFAULT_CREDENTIAL_SECONDS = 6 * 3600
AUDIT_UNAVAILABLE = ErrorAnswer("AuditUnavailable", "credentials cannot be audited now")
STORE_UNAVAILABLE = ErrorAnswer("StoreUnavailable", "try again")


class NodeApiError(Exception):
    """An answer other than 200: an HTTP status and a message for the agent's log."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class NodeApiSettings:
    credential_seconds: int = DEFAULT_CREDENTIAL_SECONDS


class NodeApiResource(Resource):
    isLeaf = True

    def __init__(
        self,
        store: Store,
        hub: AssignmentHub,
        sessions: Sessions,
        audit: AuditLog,
        clock: IReactorTime,
        settings: NodeApiSettings | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._store = store
        self._hub = hub
        self._sessions = sessions
        self._audit = audit
        self._clock = clock
        self._settings = settings or NodeApiSettings()
        self._metrics = metrics or ControllerMetrics(CollectorRegistry())

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.seconds(), UTC).replace(microsecond=0)

    def render(self, request: server.Request) -> bytes | int:
        parts = request.path.decode("ascii", "replace").strip("/").split("/")
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
        # Counted when answered (a long poll, later); a poll the node hangs up on is not.
        request.notifyFinish().addCallbacks(
            lambda _: self._metrics.node_api_request(endpoint, request.code),
            lambda _: None,
        )
        try:
            node = self._node(request)
            if endpoint == "assignments":
                return self._assignments(request, node)
            if endpoint == "credentials":
                return self._issue(request, node, parts[2])
            raise NodeApiError(404, "NotFound", "no such node API endpoint")
        except NodeApiError as error:
            return _json(request, error.status, ErrorAnswer(error.code, error.message))
        except StoreError as error:
            log.error("node API store failure: {error}", error=str(error))
            return _json(request, 503, STORE_UNAVAILABLE)

    def _node(self, request: server.Request) -> Node:
        certificate = _peer_certificate(request)
        if certificate is None:
            raise NodeApiError(403, "NoCertificate", "a node certificate is required")
        name = certificate.get_subject().CN or ""
        serial = certificate.get_serial_number()
        with self._store.transaction() as tx:
            node = tx.get_node(name)
            if (
                node is None
                or node.retired is not None
                or int(node.certificate_serial, 16) != serial
            ):
                log.warn("refused node certificate for {name!r}", name=name)
                raise NodeApiError(403, "UnknownNode", f"node {name!r} is not enrolled")
            node = replace(node, last_contact=format_time(self._now()))
            tx.update_node(node)
        return node

    # assignments

    def _assignments(self, request: server.Request, node: Node) -> bytes | int:
        since = _int_arg(request, b"since", -1, -1, MAX_REVISION)
        wait = float(_int_arg(request, b"wait", 0, 0, int(MAX_WAIT_SECONDS)))
        if node.revision > since or wait == 0:
            return _json(request, 200, self._snapshot(node.name))
        waiting = self._hub.wait(node.name, wait)
        request.notifyFinish().addErrback(lambda _: waiting.cancel())

        def answer(_: bool) -> None:
            try:
                body = self._snapshot(node.name)
            except StoreError as error:
                log.error("node API store failure: {error}", error=str(error))
                request.write(_json(request, 503, STORE_UNAVAILABLE))
            else:
                request.write(_json(request, 200, body))
            request.finish()

        def gone(failure: Failure) -> None:
            failure.trap(CancelledError)  # the node hung up: nothing to answer

        waiting.addCallbacks(answer, gone)
        return server.NOT_DONE_YET

    def _snapshot(self, node_name: str) -> AssignmentsAnswer:
        with self._store.transaction() as tx:
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

    # credentials

    def _issue(self, request: server.Request, node: Node, instance_id: str) -> int:
        """Answer with fresh credentials once their audit record is on disk (committed with
        those of concurrent requests: see `AuditLog.append`)."""
        body, record = self._credentials(node, instance_id)
        hung_up = False

        def gone(_: object) -> None:
            nonlocal hung_up
            hung_up = True

        def answer(status: int, answer_body: CredentialsAnswer | ErrorAnswer) -> None:
            if not hung_up:
                request.write(_json(request, status, answer_body))
                request.finish()

        def written(_: None) -> None:
            self._metrics.credentials_issued("instance")
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
            else:
                log.failure("cannot write the audit log", failure)
            answer(503, AUDIT_UNAVAILABLE)

        request.notifyFinish().addErrback(gone)
        self._audit.append(record).addCallbacks(written, not_written).addErrback(
            lambda failure: log.failure("answering a credentials request failed", failure)
        )
        return server.NOT_DONE_YET

    def _credentials(
        self, node: Node, instance_id: str
    ) -> tuple[CredentialsAnswer, Mapping[str, object]]:
        """Fresh credentials for `instance_id` if it may have them, and their audit record."""
        now = self._now()
        with self._store.transaction() as tx:
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
        return body, record


def _peer_certificate(request: server.Request) -> Any:
    transport = getattr(request.channel, "transport", None)
    get = getattr(transport, "getPeerCertificate", None)
    return get() if get is not None else None


_INTEGER = re.compile(rb"-?[0-9]{1,19}")


def _int_arg(request: server.Request, name: bytes, default: int, minimum: int, maximum: int) -> int:
    """An integer query argument within ``[minimum, maximum]``: anything else is a 400 that
    names the argument and its range (never an exception from ``int``/``float``)."""
    values = request.args.get(name) if request.args else None
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


def _json(
    request: server.Request,
    status: int,
    body: AssignmentsAnswer | CredentialsAnswer | ErrorAnswer,
) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body.to_wire()).encode("utf-8")


# -- the node API's listener ----------------------------------------------------------------


class _BodyLimit(BodyLimit):
    """Refuses a body over ``max_body`` bytes with the API's 413 error XML, then hangs up."""

    max_body = DEFAULT_MAX_BODY

    def refusal(self) -> bytes:
        return body_refusal(self.max_body)


class BoundedRequest(_BodyLimit, server.Request):
    """A twisted.web request with the body limit."""


class ApiSite(server.Site):
    """A Site whose access log is the API's own structured line, not Apache's combined format."""

    displayTracebacks = False
    noisy = False

    def log(self, request: server.Request) -> None:  # type: ignore[override]
        pass


def make_site(resource: Resource, max_body: int = DEFAULT_MAX_BODY) -> server.Site:
    """The node API's site: `resource` behind the body limit, no access log of Twisted's."""
    site = ApiSite(resource)  # type: ignore[no-untyped-call]
    site.requestFactory = type("ApiRequest", (BoundedRequest,), {"max_body": max_body})  # type: ignore[assignment]
    # The node API reads JSON, never forms: Twisted's form parser (through the email package)
    # stays out of the way. Twisted 25 and later read this flag.
    site._parsePOSTFormSubmission = False
    return site
