"""What an API action is: its service, name, input shape and handler; and what a handler sees."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.query import Struct
from controller.store.base import Transaction


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of a request."""

    account_id: str
    arn: str
    access_key_id: str
    user_id: str
    #: root | user | assumed-role | federated-user
    kind: str


@dataclass(frozen=True)
class Context:
    """Everything a handler may use: one store transaction, the caller and the time."""

    tx: Transaction
    caller: Caller
    now: datetime

    @property
    def account_id(self) -> str:
        return self.caller.account_id


Result = Mapping[str, Any] | None
Handler = Callable[[Context, dict[str, Any]], Result]


@dataclass(frozen=True)
class Action:
    service: str
    name: str
    input: Struct
    handler: Handler


class Registry:
    """The actions of the services one endpoint serves, looked up by (service, action)."""

    def __init__(self) -> None:
        self._actions: dict[tuple[str, str], Action] = {}

    def action(self, service: str, name: str, input: Struct) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._actions[(service, name)] = Action(service, name, input, handler)
            return handler

        return register

    def get(self, service: str, name: str) -> Action | None:
        return self._actions.get((service, name))

    def names(self, service: str) -> list[str]:
        return sorted(name for (svc, name) in self._actions if svc == service)

    def services(self) -> set[str]:
        return {svc for (svc, _) in self._actions}
