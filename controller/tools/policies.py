"""The policy documents the tools write for the user: a role's trust in a service, and the
one-statement policy of ``iam-roleaddpolicy``. Compact JSON, keys in the order people read them,
``Version`` 2008-10-17 as the original tools wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

POLICY_VERSION = "2008-10-17"
EFFECTS = ("Allow", "Deny")


def dumps(document: dict[str, Any]) -> str:
    """A document as compact JSON, keys in the order given."""
    return json.dumps(document, separators=(",", ":"))


def service_trust_policy(service: str) -> str:
    """A trust policy that lets ``service`` (e.g. ec2.amazonaws.com) assume the role."""
    return dumps(
        {
            "Version": POLICY_VERSION,
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": [service]},
                    "Action": ["sts:AssumeRole"],
                }
            ],
        }
    )


def statement_policy(effect: str, actions: Sequence[str], resources: Sequence[str]) -> str:
    """A policy of one statement: ``effect`` (Allow or Deny, any case) on ``actions`` and
    ``resources``, each a list even when it holds one value."""
    return dumps(
        {
            "Version": POLICY_VERSION,
            "Statement": [
                {
                    "Effect": effect_name(effect),
                    "Action": list(actions),
                    "Resource": list(resources),
                }
            ],
        }
    )


def effect_name(effect: str) -> str:
    """``Allow`` or ``Deny`` whatever the case given; ValueError for anything else."""
    for name in EFFECTS:
        if effect.lower() == name.lower():
            return name
    raise ValueError(f"effect must be Allow or Deny, not {effect!r}")


def decoded_document(text: str) -> str:
    """A policy document as IAM returns it (URL-encoded, RFC 3986) made plain JSON text again."""
    return unquote(text)
