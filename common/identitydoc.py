"""The instance identity document's exact bytes, and the JSON layout the metadata service uses.

The controller renders an instance's document once, at launch, and signs those bytes; the agent
serves them as they are (``dynamic/instance-identity/document``). The agent renders one itself
only for an instance launched before documents were signed. Both use :func:`identity_document`,
so a document has one layout wherever it is made.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final

from common.nodemessages import InstanceMetadata
from common.timestamps import format_timestamp

IDENTITY_DOCUMENT_VERSION: Final = "2017-09-30"
ARCHITECTURE: Final = "x86_64"


def aws_json(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Pretty JSON laid out as IMDS does: 2-space indent, ``"Key" : "value"``, no final LF."""
    lines = [f"  {json.dumps(key)} : {json.dumps(value)}" for key, value in pairs]
    return ("{\n" + ",\n".join(lines) + "\n}").encode("ascii")


def identity_document(metadata: InstanceMetadata) -> bytes:
    """The document of an instance with this metadata: keys sorted, AWS's ``null`` fields (and
    unknown values) left out."""
    fields: dict[str, str | None] = {
        "accountId": metadata.account_id,
        "architecture": ARCHITECTURE,
        "availabilityZone": metadata.availability_zone,
        "imageId": metadata.ami_id,
        "instanceId": metadata.instance_id,
        "instanceType": metadata.instance_type,
        "pendingTime": (format_timestamp(metadata.launch_time) if metadata.launch_time else None),
        "privateIp": metadata.local_ipv4,
        "region": metadata.region,
        "version": IDENTITY_DOCUMENT_VERSION,
    }
    return aws_json((key, value) for key, value in fields.items() if value is not None)
