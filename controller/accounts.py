"""Accounts and their root access keys: what ``rolecall-controller init`` bootstraps."""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

from controller.store.base import Transaction
from controller.store.records import AccessKey, Account

_KEY_ID_ALPHABET = string.ascii_uppercase + "234567"
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
ACCOUNT_ID = re.compile(r"[0-9]{12}")


def new_account_id() -> str:
    """A random 12-digit account id that does not start with 0 (some tools strip it)."""
    return str(secrets.randbelow(9 * 10**11) + 10**11)


def new_access_key(account_id: str, user_name: str | None, created: str) -> AccessKey:
    """A long-term key: ``AKIA`` + 16 characters, and a 40-character secret."""
    return AccessKey(
        access_key_id="AKIA" + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(16)),
        secret_access_key="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)),
        account_id=account_id,
        user_name=user_name,
        status="Active",
        created=created,
    )


@dataclass(frozen=True)
class Bootstrap:
    account: Account
    root_key: AccessKey | None  # None when the account existed already: its secret is not re-shown
    created: bool


def create_account(tx: Transaction, account_id: str, name: str, created: str) -> Bootstrap:
    """A new account with one root access key."""
    account = Account(account_id, name, created)
    tx.insert_account(account)
    key = new_access_key(account_id, None, created)
    tx.insert_access_key(key)
    return Bootstrap(account, key, created=True)


def ensure_first_account(
    tx: Transaction, account_id: str | None, name: str, created: str
) -> Bootstrap:
    """The bootstrap account, created on the first run only: running init again changes nothing."""
    existing = tx.list_accounts()
    if existing:
        return Bootstrap(existing[0], None, created=False)
    return create_account(tx, account_id or new_account_id(), name, created)
