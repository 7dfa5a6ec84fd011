"""The public API endpoint: HTTP in, SigV4 checked, one action run in one transaction, XML out.

This is the only place that turns `ApiError`s into AWS's error XML (IAM/STS or EC2 format), and
the only place an unexpected exception is caught: it is logged here and answered as a 500 with no
detail, never as a traceback.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from common.http11 import (
    SERVER,
    ConnectionLimit,
    Http11Protocol,
    HttpDates,
    Request,
    Response,
    status_line,
)
from controller import sigv4, xmlout
from controller.actions import Action, Caller, Context, Registry, RequestFacts, Result, Services
from controller.authorize import authorize
from controller.errors import (
    ApiError,
    InternalFailure,
    InvalidAction,
    InvalidClientTokenId,
    InvalidParameterValue,
    MalformedQueryString,
    MethodNotAllowed,
    MissingParameter,
    RequestEntityTooLarge,
    ServiceFailure,
    ServiceUnavailable,
)
from controller.forwarded import Network, client_address
from controller.metrics import AUTHENTICATION_FAILURE_REASONS, ControllerMetrics
from controller.query import parse_form, parse_input
from controller.sessions import Sessions
from controller.store.base import Store, StoreError, StoreUnavailable, Transaction
from controller.store.records import REGION
from controller.tokens import SessionClaims

VERSIONS = {"iam": "2010-05-08", "sts": "2011-06-15", "ec2": "2016-11-15"}
DEFAULT_MAX_BODY = 1024 * 1024
_METHODS = (b"GET", b"POST")
_TEXT_XML = b"text/xml"

log = Logger(namespace="rolecall.api")


#: EC2 answers authentication and authorization failures with codes of its own.
_EC2_CODES = {
    "AccessDenied": (
        "UnauthorizedOperation",
        403,
        "You are not authorized to perform this operation. ",
    ),
    "InvalidClientTokenId": ("AuthFailure", 401, ""),
    "SignatureDoesNotMatch": ("AuthFailure", 401, ""),
    "IncompleteSignature": ("AuthFailure", 401, ""),
    "MissingAuthenticationToken": ("AuthFailure", 401, ""),
    "ServiceUnavailable": ("Unavailable", 503, ""),
}


#: Where EC2's text is not IAM's: an unknown access key is "not able to validate" there.
_EC2_MESSAGES = {
    "InvalidClientTokenId": "AWS was not able to validate the provided access credentials",
}


def ec2_error(error: ApiError) -> ApiError:
    """The EC2 spelling of an error raised by the shared layers."""
    if error.code not in _EC2_CODES:
        return error
    code, status, prefix = _EC2_CODES[error.code]
    message = _EC2_MESSAGES.get(error.code)
    if message is not None:
        translated = ApiError(message, error.detail or error.message)
    else:
        translated = ApiError(prefix + error.message, error.detail)
    translated.code, translated.status = code, status
    return translated


def new_request_id() -> str:
    """A random (version 4) UUID in its usual text form: the RequestId of one answer."""
    # As str(uuid.uuid4()) at a fraction of the cost, and without a system call: a request id
    # names an answer in logs and is no secret, so the random module's generator is enough.
    number = _request_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    text = f"{number:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_request_ids = random.Random()  # noqa: S311 - not for secrets (see new_request_id)
#: Version 4 and the RFC 4122 variant, as uuid.UUID(version=4) sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def error_body(error: ApiError, service: str | None, request_id: str) -> bytes:
    if service == "ec2":
        return xmlout.ec2_error(error.code, error.message, request_id)
    return xmlout.query_error(
        error.code, error.message, error.sender_fault, request_id, service or "iam"
    )


class PublicApi:
    """IAM, STS and EC2 on one endpoint; the service comes from the SigV4 credential scope."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        clock: IReactorTime,
        sessions: Sessions,
        services: Services | None = None,
        metrics: ControllerMetrics | None = None,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self._trusted_proxies = trusted_proxies
        self._store = store
        self._registry = registry
        self._clock = clock
        self._sessions = sessions
        self._metrics = metrics or ControllerMetrics(
            CollectorRegistry(), ((action.service, action.name) for action in registry)
        )
        self._services = replace(services or Services(), sessions=sessions, metrics=self._metrics)
        self._service_names = frozenset(registry.services())

    def answer(self, request: Request) -> Response:
        """The answer to one request on the public port (`common.http11`): a plain value in, a
        plain value out."""
        started = self._clock.seconds()
        request_id = new_request_id()
        outcome = _Outcome()
        extra: tuple[tuple[bytes, bytes], ...] = ()
        try:
            if request.method not in _METHODS:
                extra = ((b"Allow", b"GET, POST"),)
                raise MethodNotAllowed(
                    f"The HTTP method {request.method.decode('latin-1')} is not allowed;"
                    " the Query API takes GET or POST."
                )
            body, status = self._serve(request, started, request_id, outcome)
        except ApiError as error:
            if error.code in AUTHENTICATION_FAILURE_REASONS:  # before EC2 folds them into one
                self._metrics.authentication_failed(error.code)
            if outcome.service == "ec2":
                error = ec2_error(error)
            body, status = error_body(error, outcome.service, request_id), error.status
            outcome.error, outcome.detail = error.code, error.detail
        headers = (
            *extra,
            (b"Content-Type", _TEXT_XML),
            (b"x-amzn-RequestId", request_id.encode("ascii")),
        )
        duration = self._clock.seconds() - started
        self._metrics.api_request(outcome.service, outcome.action, status, duration)
        service, action = outcome.service or "-", outcome.action or "-"
        access_key_id, code = outcome.access_key_id or "-", outcome.error or "-"
        # AWS's message goes to the caller; RoleCall's detail (why, exactly) to the operator.
        why = f": {outcome.detail}" if outcome.detail else ""
        # The line is formatted here once (a format string with many fields costs more than
        # the rest of a cheap request); the fields stay in the event for structured observers.
        log.info(
            "{line}",
            line=f"{service}:{action} {status} key={access_key_id} error={code}{why}"
            f" ({duration * 1000:.1f} ms, request {request_id})",
            service=service,
            action=action,
            status=status,
            access_key_id=access_key_id,
            error=code,
            detail=outcome.detail,
            request_id=request_id,
        )
        return Response(status, headers, body)

    def _serve(
        self, request: Request, started: float, request_id: str, outcome: _Outcome
    ) -> tuple[bytes, int]:
        now = datetime.fromtimestamp(started, UTC)
        raw_path, _, raw_query = request.uri.partition(b"?")
        signed = sigv4.HttpRequest(
            method=request.method.decode("ascii"),
            path=_text(raw_path),
            query=_text(raw_query),
            headers=[
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
            ],
            body=request.body,
        )
        claim = sigv4.parse_request(signed, now)
        outcome.access_key_id = claim.access_key_id
        if claim.service in self._service_names:
            outcome.service = claim.service
        facts = _facts(request, claim, self._trusted_proxies)

        def work(tx: Transaction) -> tuple[Context, Action, Result]:
            caller = self._authenticate(tx, claim, now)
            action, inputs = self._action(signed, request, claim, outcome)
            context = Context(tx, caller, now, facts, self._services)
            if action.resource is not None:
                resource = action.resource(context, inputs)
                keys = action.condition_keys(context, inputs) if action.condition_keys else None
                for arn in (resource,) if isinstance(resource, str) else resource:
                    authorize(context, action.iam_action, arn, keys)
            return context, action, action.handler(context, inputs)

        try:
            # One transaction for the whole request: who is calling, what they may do, and
            # what the action reads and writes all come from the same snapshot. The store may
            # run it twice (see Store.run): it acts through the transaction alone.
            context, action, result = self._store.run(work)
            for announce in context.on_commit:
                announce()
        except StoreUnavailable as error:
            # The database is unreachable (no primary): a 503 the SDKs retry, at once.
            log.error(
                "store failure in {action}: {error}",
                action=outcome.action or "a request",
                error=str(error),
            )
            raise ServiceUnavailable(
                "The request has failed due to a temporary failure of the server.",
                "the service cannot reach its database now",
            ) from error
        except StoreError as error:
            # No action yet: the store failed before the request was read (no connection).
            log.error(
                "store failure in {action}: {error}",
                action=outcome.action or "a request",
                error=str(error),
            )
            raise ServiceFailure(
                "The request processing has failed because of an unknown error, exception or"
                " failure.",
                "the service could not reach its store",
            ) from error
        except ApiError:
            raise
        except Exception as error:
            log.failure("unexpected failure in {action}", action=outcome.action or "a request")
            raise InternalFailure(
                "The request processing has failed because of an unknown error, exception or"
                " failure."
            ) from error
        if action.service == "ec2":
            return xmlout.ec2_response(action.name, result or {}, request_id), 200
        return xmlout.query_response(action.service, action.name, result, request_id), 200

    def _action(
        self,
        signed: sigv4.HttpRequest,
        request: Request,
        claim: sigv4.SignedClaim,
        outcome: _Outcome,
    ) -> tuple[Action, dict[str, Any]]:
        """The action and validated input a request names."""
        params = request_params(signed, request.header(b"content-type"))
        if outcome.service is None:
            raise InvalidAction(
                f"RoleCall does not serve the service '{claim.service}' named in the credential"
                f" scope; it serves {', '.join(sorted(self._service_names))}."
            )
        service = outcome.service
        action_name = params.get("Action")
        if not action_name:
            raise MissingParameter("The request must contain the parameter Action.")
        outcome.action = action_name
        action = self._registry.get(service, action_name)
        if action is None:
            raise InvalidAction(
                f"Could not find operation {action_name} for version {VERSIONS[service]}"
            )
        version = params.get("Version")
        if not version:
            raise MissingParameter("The request must contain the parameter Version.")
        if version != VERSIONS[service]:
            raise InvalidParameterValue(
                f"Version {version} is not supported for {service}; use {VERSIONS[service]}."
            )
        inputs = parse_input(params, action.input, flattened_lists=service == "ec2")
        return action, inputs

    def _authenticate(self, tx: Transaction, claim: sigv4.SignedClaim, now: datetime) -> Caller:
        """Who signed the request: a long-term key from the store, or a sealed session token."""
        invalid = InvalidClientTokenId("The security token included in the request is invalid.")
        if claim.security_token is not None:
            claims = self._sessions.open(claim.security_token, now)
            if claims.access_key_id != claim.access_key_id:
                raise invalid
            sigv4.verify(claim, claims.secret_access_key)
            if claims.principal_type == "instance":
                revoked = instance_session_revoked(tx, claims)
                if revoked is not None:
                    log.info(
                        "instance credentials {access_key_id} refused: {reason}",
                        access_key_id=claims.access_key_id,
                        reason=revoked,
                    )
                    raise invalid
            return caller_from_session(claims)
        key = tx.get_access_key(claim.access_key_id)
        if key is None or key.status != "Active":
            raise invalid
        sigv4.verify(claim, key.secret_access_key)
        if key.user_name is None:
            arn = f"arn:aws:iam::{key.account_id}:root"
            return Caller(key.account_id, arn, key.access_key_id, key.account_id, "root",
                          issuer_arn=arn)  # fmt: skip
        user = tx.get_user(key.account_id, key.user_name)
        if user is None:
            raise invalid
        return Caller(
            account_id=key.account_id,
            arn=user.arn,
            access_key_id=key.access_key_id,
            user_id=user.user_id,
            kind="user",
            user_name=user.name,
            issuer_user_id=user.user_id,
            issuer_arn=user.arn,
        )


def instance_session_revoked(tx: Transaction, claims: SessionClaims) -> str | None:
    """Why an instance's role credentials no longer stand, or None while they do: the instance
    must not be terminated, its current profile must still hold the session's role, and the node
    they were issued to must still be enrolled and still run it, or be the node it was just
    moved from (a live-migrated guest carries its credentials along; that node may not get new
    ones). Checked at every request, so each of these revokes the credentials at once, not when
    they expire."""
    instance_id, node_name = claims.extra.get("instance_id"), claims.extra.get("node")
    instance = tx.get_instance(instance_id) if instance_id else None
    if instance is None or instance.account_id != claims.account_id:
        return f"instance {instance_id} does not exist"
    if instance.state == "terminated":
        return f"instance {instance_id} is terminated"
    profile = (
        tx.get_instance_profile_by_id(instance.profile_id)
        if instance.profile_id is not None and instance.association_state == "associated"
        else None
    )
    if profile is None or profile.role_id != claims.role_id:
        return f"instance {instance_id} no longer has an instance profile with this role"
    node = tx.get_node(node_name) if node_name else None
    if (
        node is None
        or node.retired is not None
        or node.name not in (instance.node_name, instance.previous_node)
    ):
        return f"node {node_name} is retired or no longer runs instance {instance_id}"
    return None


def caller_from_session(claims: SessionClaims) -> Caller:
    """The caller that temporary credentials stand for."""
    kind = claims.principal_type if claims.principal_type != "instance" else "assumed-role"
    instance_id = claims.extra.get("instance_id")
    return Caller(
        account_id=claims.account_id,
        arn=claims.principal_arn,
        access_key_id=claims.access_key_id,
        user_id=claims.user_id,
        kind=kind,
        user_name=claims.extra.get("user_name"),
        issuer_user_id=claims.extra.get("user_id"),
        role_id=claims.role_id,
        session_policy=claims.session_policy,
        issuer_arn=claims.issuer_arn,
        source_identity=claims.source_identity,
        issued=claims.issued,
        expires=claims.expires,
        source_instance_arn=(
            f"arn:aws:ec2:{REGION}:{claims.account_id}:instance/{instance_id}"
            if instance_id
            else None
        ),
    )


def _facts(
    request: Request, claim: sigv4.SignedClaim, trusted_proxies: tuple[Network, ...]
) -> RequestFacts:
    peer = getattr(request.peer, "host", "127.0.0.1")
    if trusted_proxies:
        forwarded = request.header_values(b"x-forwarded-for")
        peer = client_address(
            peer, [value.decode("latin-1") for value in forwarded], trusted_proxies
        )
    return RequestFacts(
        source_ip=peer,
        secure_transport=request.secure,
        region=claim.region,
    )


class _Outcome:
    """What is known about a request so far, for its error format and its log line."""

    service: str | None = None
    action: str | None = None
    access_key_id: str | None = None
    error: str | None = None
    detail: str | None = None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedQueryString("The request URI is not valid UTF-8.") from error


def request_params(request: sigv4.HttpRequest, content_type: bytes | None) -> dict[str, str]:
    """The Query parameters from the query string and a form-encoded body; no name twice."""
    pairs = list(sigv4.parse_query(request.query))
    if request.body:
        media_type = (content_type or b"").split(b";")[0].strip().lower()
        if media_type != b"application/x-www-form-urlencoded":
            raise MalformedQueryString(
                "The request body must be application/x-www-form-urlencoded Query parameters."
            )
        try:
            text = request.body.decode("utf-8")
            pairs += parse_form(text)
        except (UnicodeDecodeError, ValueError) as error:
            raise MalformedQueryString(
                "The request body is not valid form-encoded UTF-8 text."
            ) from error
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise MalformedQueryString(f"The parameter {name} appears more than once.")
        params[name] = value
    return params


def body_refusal(max_body: int) -> bytes:
    """The whole answer to a body over ``max_body`` bytes: the API's 413 error XML, then close."""
    error = RequestEntityTooLarge(
        f"The request body is larger than the {max_body} bytes this endpoint accepts."
    )
    body = xmlout.query_error(error.code, error.message, True, new_request_id(), "iam")
    head = (
        f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    return status_line(error.status) + head + body


# -- the public port: httptools' parser (common/http11.py), each request straight to the API --


class ApiFactory(ServerFactory):
    """The public port: an `Http11Protocol` per connection, each request rendered by ``api``.

    Twisted's channel and ``twisted.web.server`` are left out (resource traversal, sessions,
    form parsing, HTML error pages, line-by-line parsing): see docs/decisions.md.
    """

    noisy = False

    def __init__(
        self,
        api: PublicApi,
        clock: IReactorTime,
        max_body: int = DEFAULT_MAX_BODY,
        limit: ConnectionLimit | None = None,
    ) -> None:
        self._api = api
        self._clock = clock
        self._max_body = max_body
        self._dates = HttpDates(clock)
        #: The most connections the port holds at once (None: no limit).
        self.limit = limit

    def buildProtocol(self, addr: IAddress | None) -> Http11Protocol | None:
        limit = self.limit
        if limit is not None and not limit.admits():
            return None  # accepted in the same batch past the limit: closed at once
        protocol = Http11Protocol(
            self._answer,
            self._clock,
            self._date,
            SERVER,
            self._refusal,
            self._max_body,
        )
        protocol.factory = self
        if limit is not None:
            protocol.limits = (limit,)
        return protocol

    def _date(self) -> bytes:
        return self._dates.now()[0]

    def _refusal(self) -> bytes:
        return body_refusal(self._max_body)

    def _answer(self, request: Request, protocol: Http11Protocol) -> Response:
        try:
            return self._api.answer(request)
        except Exception:
            # answer() answers every ApiError and unexpected failure itself; this is a last
            # resort (a failing metric or log observer), still an AWS error and no traceback.
            log.failure("cannot answer a request")
            error = InternalFailure(
                "The request processing has failed because of an unknown error, exception or"
                " failure."
            )
            return Response(
                error.status,
                ((b"Content-Type", _TEXT_XML),),
                error_body(error, None, new_request_id()),
            )
