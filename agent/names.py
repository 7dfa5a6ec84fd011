"""What an instance id and a namespace name may be, before either becomes part of a path.

The controller names both; the agent treats them as untrusted input. An instance id goes into
the node API's URL and the default namespace name; a namespace name becomes a file in
/run/netns. Both are checked against the strictest pattern that still covers every legitimate
value, in the serving process (to refuse one instance with a clear reason and serve the rest) and
again in the privileged process (the security boundary, which never trusts its peer).
"""

from __future__ import annotations

import re

#: EC2's instance ids, as the controller makes them (controller/ec2/common.py INSTANCE_ID).
INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
#: A network namespace's name: a plain file name in /run/netns (no "/", never "." or ".."
#: since it starts with a letter or digit), short enough for a systemd descriptor name.
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class InvalidName(ValueError):
    """An instance id or namespace name that does not have the required form."""


def check_instance_id(value: object) -> str:
    """`value` if it is an instance id (``i-`` and 8 or 17 lower-case hex digits)."""
    if not isinstance(value, str) or not INSTANCE_ID.fullmatch(value):
        raise InvalidName(
            f"instance id {_shown(value)} is not i- and 8 or 17 lower-case hex digits"
        )
    return value


def check_namespace(value: object) -> str:
    """`value` if it is an acceptable namespace name (1 to 64 letters, digits, '_', '.' or '-',
    starting with a letter or digit)."""
    if not isinstance(value, str) or not NAMESPACE.fullmatch(value):
        raise InvalidName(
            f"namespace name {_shown(value)} is not 1 to 64 letters, digits, '_', '.' or '-'"
            " starting with a letter or digit"
        )
    return value


def _shown(value: object) -> str:
    """The refused value for a log line: quoted, escaped and cut short (it is untrusted)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: The namespace's end of the veth pair.
INSIDE = "imds0"
#: The host end of an instance's veth pair: "rcv" and 12 hex digits (15 characters, IFNAMSIZ-1).
HOST_END = re.compile(r"rcv[0-9a-f]{12}")
#: What a tap's name may be: a Linux interface name (1 to 15 characters, no "/", ":" or
#: whitespace), narrowed to characters nft takes in a quoted device name and a log line shows
#: as they are. libvirt's vnetN, Nova's tapXXXXXXXX-XX, macvtapN all fit.
TAP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")


class InvalidTap(ValueError):
    """A tap name the agent refuses; the message says why."""


def check_tap(value: object) -> str:
    """`value` if it may name a VM's tap: an interface name (`TAP`), not the loopback and not
    one of the agent's own veth ends."""
    if not isinstance(value, str) or not TAP.fullmatch(value):
        shown = repr(value)[:40]
        raise InvalidTap(
            f"tap {shown} is not an interface name (1 to 15 letters, digits, '_', '.' or '-',"
            " not starting with '.' or '-')"
        )
    if value == "lo":
        raise InvalidTap("tap lo: the loopback is no VM's tap")
    if HOST_END.fullmatch(value) or value == INSIDE:
        raise InvalidTap(f"tap {value}: that is one of the agent's own veth ends")
    return value
