"""Callers that the policy and AssumeRole tests act as, built the way authentication builds them:
an account's root, and a user named ``name`` (access key ``AKIA<NAME>``, id ``AIDA<NAME>``)."""

from __future__ import annotations

from typing import Any

from controller.actions import Caller


def root(account: str, **extra: Any) -> Caller:
    return Caller(account, f"arn:aws:iam::{account}:root", "AKIAROOT", account, "root", **extra)


def user(account: str, name: str, **extra: Any) -> Caller:
    tag = name.upper()
    return Caller(
        account,
        f"arn:aws:iam::{account}:user/{name}",
        f"AKIA{tag}",
        f"AIDA{tag}",
        "user",
        user_name=name,
        issuer_user_id=f"AIDA{tag}",
        **extra,
    )
