"""Timestamps as AWS writes them, ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, whole seconds).

The node API's messages (`common.nodemessages`) and the instance metadata service (spec/imds.md
line 21) both carry them, so both daemons read and write them here. Pure: no I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
"""The one timestamp layout SDKs parse (botocore uses exactly this ``strptime`` format)."""

_EXACT: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def format_timestamp(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ``, fractions dropped (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from ``YYYY-MM-DDTHH:MM:SSZ`` or another ISO 8601 form.

    Raises ``ValueError`` for anything else. A time without an offset is taken as UTC.
    """
    try:
        moment = datetime.fromisoformat(text)  # C, and ``Z`` is UTC since Python 3.11
    except ValueError:
        moment = datetime.strptime(text, TIMESTAMP_FORMAT)  # also unpadded fields
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_exact_timestamp(text: str) -> datetime:
    """An aware UTC datetime from exactly ``YYYY-MM-DDTHH:MM:SSZ`` and nothing else (what an
    SDK will parse back). ``ValueError`` says what is wrong, showing `text` (never a secret)."""
    if not _EXACT.fullmatch(text):
        raise ValueError(f"must be YYYY-MM-DDTHH:MM:SSZ (got {text!r})")
    try:
        return datetime.fromisoformat(text)  # the shape is checked: this is UTC, whole seconds
    except ValueError:
        raise ValueError(f"not a date and time (got {text!r})") from None
