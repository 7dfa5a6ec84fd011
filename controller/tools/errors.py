"""How a tool fails: every error is one line for the user, an AWS error keeps its code."""

from __future__ import annotations


class ToolError(Exception):
    """Something the user can fix; its message is one line."""


class ServiceError(ToolError):
    """The service refused the call: AWS's error code and message."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status
