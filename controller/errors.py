"""The controller's API errors: each is an exception carrying its AWS code and HTTP status.

Handlers raise these; one place (``controller.api``) turns them into the protocol's XML. Messages
are shown to callers and logged, so they must never contain a secret key or a session token.
"""

from __future__ import annotations

from collections.abc import Sequence


class ApiError(Exception):
    """An error the API answers with; ``code`` and ``status`` are AWS's."""

    code: str = "InternalFailure"
    status: int = 500
    #: IAM/STS ``<Type>``: ``Sender`` for the caller's fault, ``Receiver`` for ours.
    sender_fault: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def _error(code: str, status: int, sender_fault: bool = True) -> type[ApiError]:
    return type(code, (ApiError,), {"code": code, "status": status, "sender_fault": sender_fault})


# IAM and STS
NoSuchEntity = _error("NoSuchEntity", 404)
EntityAlreadyExists = _error("EntityAlreadyExists", 409)
DeleteConflict = _error("DeleteConflict", 409)
LimitExceeded = _error("LimitExceeded", 409)
MalformedPolicyDocument = _error("MalformedPolicyDocument", 400)
InvalidInput = _error("InvalidInput", 400)
ValidationError = _error("ValidationError", 400)
AccessDenied = _error("AccessDenied", 403)
InvalidClientTokenId = _error("InvalidClientTokenId", 403)
SignatureDoesNotMatch = _error("SignatureDoesNotMatch", 403)
ExpiredToken = _error("ExpiredToken", 403)
RequestExpired = _error("RequestExpired", 400)
MissingAuthenticationToken = _error("MissingAuthenticationToken", 403)
IncompleteSignature = _error("IncompleteSignature", 400)
InvalidAction = _error("InvalidAction", 400)
MissingParameter = _error("MissingParameter", 400)
InvalidParameterValue = _error("InvalidParameterValue", 400)
InvalidParameterCombination = _error("InvalidParameterCombination", 400)
MalformedQueryString = _error("MalformedQueryString", 400)
RequestEntityTooLarge = _error("RequestEntityTooLarge", 413)
MethodNotAllowed = _error("MethodNotAllowed", 405)
PackedPolicyTooLarge = _error("PackedPolicyTooLarge", 400)
ServiceFailure = _error("ServiceFailure", 500, sender_fault=False)
InternalFailure = _error("InternalFailure", 500, sender_fault=False)

# EC2
AuthFailure = _error("AuthFailure", 401)
UnauthorizedOperation = _error("UnauthorizedOperation", 403)

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
