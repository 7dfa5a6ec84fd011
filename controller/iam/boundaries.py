"""Permissions boundaries of roles and users (issue 15)."""

from __future__ import annotations
