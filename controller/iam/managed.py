"""Customer-managed and AWS-managed policies: their versions, tags, and attachments to roles,
users and groups (issue 15)."""

from __future__ import annotations
