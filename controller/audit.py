"""The append-only audit log of credential issuance: one JSON object per line, never a secret."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path


class AuditLog:
    """Appends records to a file (0600) and flushes each to disk before returning, so a
    credential is never handed out without its trace. Raises OSError when it cannot."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: Mapping[str, object]) -> None:
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
