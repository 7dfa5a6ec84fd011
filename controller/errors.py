"""The controller's API errors: each is an exception carrying its AWS code and HTTP status.

Handlers raise these; one place (``controller.api``) turns them into the protocol's XML. Messages
are shown to callers and logged, so they must never contain a secret key or a session token.

A message is AWS's own text wherever AWS's is known, because tools match on it (the table in
docs/api-coverage.md); where RoleCall can say more than AWS does (which statement of a policy is
wrong, and why), that goes in ``detail``, which the controller logs and never sends.
"""

from __future__ import annotations

from collections.abc import Sequence


class ApiError(Exception):
    """An error the API answers with; ``code`` and ``status`` are AWS's."""

    code: str = "InternalFailure"
    status: int = 500
    #: IAM/STS ``<Type>``: ``Sender`` for the caller's fault, ``Receiver`` for ours.
    sender_fault: bool = True

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: RoleCall's own explanation beyond AWS's text: logged with the request, never sent.
        self.detail = detail

    def __str__(self) -> str:
        """The message and, for the operator, the detail (an answer uses ``message`` alone)."""
        return self.message if self.detail is None else f"{self.message} ({self.detail})"

    def __repr__(self) -> str:
        if self.detail is None:
            return f"{type(self).__name__}({self.message!r})"
        return f"{type(self).__name__}({self.message!r}, detail={self.detail!r})"


# IAM and STS


class NoSuchEntity(ApiError):
    code = "NoSuchEntity"
    status = 404


class EntityAlreadyExists(ApiError):
    code = "EntityAlreadyExists"
    status = 409


class DeleteConflict(ApiError):
    code = "DeleteConflict"
    status = 409


class LimitExceeded(ApiError):
    code = "LimitExceeded"
    status = 409


class MalformedPolicyDocument(ApiError):
    code = "MalformedPolicyDocument"
    status = 400


class InvalidInput(ApiError):
    code = "InvalidInput"
    status = 400


class ValidationError(ApiError):
    code = "ValidationError"
    status = 400


class AccessDenied(ApiError):
    code = "AccessDenied"
    status = 403


class InvalidClientTokenId(ApiError):
    code = "InvalidClientTokenId"
    status = 403


class SignatureDoesNotMatch(ApiError):
    code = "SignatureDoesNotMatch"
    status = 403


class ExpiredToken(ApiError):
    code = "ExpiredToken"
    status = 403


class RequestExpired(ApiError):
    code = "RequestExpired"
    status = 400


class MissingAuthenticationToken(ApiError):
    code = "MissingAuthenticationToken"
    status = 403


class IncompleteSignature(ApiError):
    code = "IncompleteSignature"
    status = 400


class InvalidAction(ApiError):
    code = "InvalidAction"
    status = 400


class MissingParameter(ApiError):
    code = "MissingParameter"
    status = 400


class InvalidParameterValue(ApiError):
    code = "InvalidParameterValue"
    status = 400


class InvalidParameterCombination(ApiError):
    code = "InvalidParameterCombination"
    status = 400


class MalformedQueryString(ApiError):
    code = "MalformedQueryString"
    status = 400


class RequestEntityTooLarge(ApiError):
    code = "RequestEntityTooLarge"
    status = 413


class MethodNotAllowed(ApiError):
    code = "MethodNotAllowed"
    status = 405


class PackedPolicyTooLarge(ApiError):
    code = "PackedPolicyTooLarge"
    status = 400


class ServiceFailure(ApiError):
    code = "ServiceFailure"
    status = 500
    sender_fault = False


class ServiceUnavailable(ApiError):
    """The service cannot answer now (its database is unreachable): IAM's and STS's 503, which
    every SDK retries by itself. EC2 spells it ``Unavailable`` (``controller.api``)."""

    code = "ServiceUnavailable"
    status = 503
    sender_fault = False


class InternalFailure(ApiError):
    code = "InternalFailure"
    status = 500
    sender_fault = False


# EC2


class AuthFailure(ApiError):
    code = "AuthFailure"
    status = 401


class UnauthorizedOperation(ApiError):
    code = "UnauthorizedOperation"
    status = 403


_MAX_SHOWN = 100


def shown_value(value: object) -> str:
    """A value as AWS quotes it in a validation message, cut short so messages stay readable."""
    if value is None:
        return "null"
    text = str(value)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return f"'{text}'"


def validation_error(problems: Sequence[tuple[object, str, str]]) -> ApiError:
    """AWS's ValidationError from ``(value, member path, constraint)`` triples.

    ``[(None, "roleName", "Member must not be null")]`` gives "1 validation error detected: Value
    null at 'roleName' failed to satisfy constraint: Member must not be null".
    """
    count = len(problems)
    noun = "error" if count == 1 else "errors"
    details = "; ".join(
        f"Value {shown_value(value)} at '{member}' failed to satisfy constraint: {constraint}"
        for value, member, constraint in problems
    )
    return ValidationError(f"{count} validation {noun} detected: {details}")


class InvalidInstanceIDNotFound(ApiError):
    code = "InvalidInstanceID.NotFound"
    status = 400


class InvalidInstanceIDMalformed(ApiError):
    code = "InvalidInstanceID.Malformed"
    status = 400


class InvalidAssociationIDNotFound(ApiError):
    code = "InvalidAssociationID.NotFound"
    status = 400


class IncorrectState(ApiError):
    code = "IncorrectState"
    status = 400


class IncorrectInstanceState(ApiError):
    code = "IncorrectInstanceState"
    status = 400


class InsufficientInstanceCapacity(ApiError):
    """A server error in EC2 (HTTP 500): the caller may retry later, SDKs do by themselves."""

    code = "InsufficientInstanceCapacity"
    status = 500
    sender_fault = False


class InstanceLimitExceeded(ApiError):
    code = "InstanceLimitExceeded"
    status = 400


class TagLimitExceeded(ApiError):
    code = "TagLimitExceeded"
    status = 400


class DryRunOperation(ApiError):
    code = "DryRunOperation"
    status = 412


class InsufficientFreeAddressesInSubnet(ApiError):
    """The instance's subnet has no free address left (the node's, or ``ec2.subnet``)."""

    code = "InsufficientFreeAddressesInSubnet"
    status = 400


class UnsupportedOperation(ApiError):
    """A parameter EC2 knows that RoleCall does not honour: refused, never silently dropped."""

    code = "UnsupportedOperation"
    status = 400


class UnknownParameter(ApiError):
    """A parameter the action does not have, as EC2 answers it."""

    code = "UnknownParameter"
    status = 400


class IdempotentParameterMismatch(ApiError):
    """A ClientToken used again with other arguments."""

    code = "IdempotentParameterMismatch"
    status = 400


class InvalidID(ApiError):
    """A resource id of a kind the action does not take."""

    code = "InvalidID"
    status = 400


class InvalidKeyPairNotFound(ApiError):
    code = "InvalidKeyPair.NotFound"
    status = 400


class InvalidKeyPairDuplicate(ApiError):
    code = "InvalidKeyPair.Duplicate"
    status = 400


class InvalidKeyPairFormat(ApiError):
    code = "InvalidKeyPair.Format"
    status = 400


class KeyPairLimitExceeded(ApiError):
    code = "KeyPairLimitExceeded"
    status = 400
