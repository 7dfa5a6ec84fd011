"""IAM groups: their members and inline policies (issue 15)."""

from __future__ import annotations
