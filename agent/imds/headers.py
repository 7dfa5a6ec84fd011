"""The names of the headers the pass-through adds and keeps (`agent.imds.passthrough`), apart
so that reading the agent's configuration (`agent.config`) imports no more than it needs: the
hypervisor's hook reads that configuration at every VM start."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: The guest's headers that are forwarded; every other one is dropped.
GUEST_HEADERS: Final = ("Accept", "User-Agent")
#: Names a trusted header may not have: the guest's allowed headers, the HTTP framing and
#: hop-by-hop headers (twisted.web's client writes those itself), and IMDSv2's own.
RESERVED_NAMES: Final = frozenset(
    {
        *(name.lower() for name in GUEST_HEADERS),
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-authorization",
        "proxy-connection",
        "x-aws-ec2-metadata-token",
        "x-aws-ec2-metadata-token-ttl-seconds",
    }
)
#: A header name: an RFC 9110 token.
HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}", re.ASCII)


@dataclass(frozen=True)
class HeaderScheme:
    """The names of the headers the agent adds for the upstream service. ``None``: that
    header is left out (the instance id and its signature are always sent)."""

    instance_id: str = "X-Instance-ID"
    account_id: str | None = "X-Tenant-ID"
    signature: str = "X-Instance-ID-Signature"
    forwarded_for: str | None = "X-Forwarded-For"

    def names(self) -> tuple[str, ...]:
        """The headers this scheme sends, as configured."""
        named = (self.instance_id, self.account_id, self.signature, self.forwarded_for)
        return tuple(name for name in named if name is not None)


#: Neutron's metadata agent's headers, as Nova's metadata API reads them.
NEUTRON: Final = HeaderScheme()
