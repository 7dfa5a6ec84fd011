"""EC2 ModifyInstanceMetadataDefaults and GetInstanceMetadataDefaults: the instance metadata
defaults of an account (issue 15)."""

from __future__ import annotations
