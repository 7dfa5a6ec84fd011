"""The AWS Query protocol's output side: results and errors as the XML AWS sends.

Values are plain data: a dict is a structure (elements in insertion order), a list is a list
(``<member>`` for IAM/STS, ``<item>`` for EC2), None is omitted. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

NAMESPACES = {
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "ec2": "http://ec2.amazonaws.com/doc/2016-11-15/",
}


# Characters XML 1.0 cannot carry at all (a caller's %01 may be quoted back in a message).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def format_time(moment: datetime) -> str:
    """AWS's timestamp form in XML: UTC, seconds, ``Z`` (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    if moment.year < 1000:  # strftime's own (platform's) way with short years
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    # strftime parses its format on every call: on every answer, this is several times faster.
    return (
        f"{moment.year}-{moment.month:02}-{moment.day:02}"
        f"T{moment.hour:02}:{moment.minute:02}:{moment.second:02}Z"
    )


def xml_text(text: str) -> str:
    """Text as element content: escaped, CR kept as ``&#13;`` (parsers fold a raw one into LF),
    and characters XML cannot carry replaced by U+FFFD so the document always parses."""
    if text.isascii() and text.isprintable():  # no CR nor control character: escape only
        if "&" in text:
            text = text.replace("&", "&amp;")
        if "<" in text:
            text = text.replace("<", "&lt;")
        if ">" in text:
            text = text.replace(">", "&gt;")
        return text
    return escape(_NOT_XML.sub("\ufffd", text), {"\r": "&#13;"})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    return xml_text(str(value))


def _element(name: str, value: Any, list_member: str, out: list[str]) -> None:
    kind = type(value)
    if kind is str:  # most values: one append, no isinstance against ABCs
        out.append(f"<{name}>{xml_text(value)}</{name}>")
        return
    if value is None:
        return
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        out.append(f"<{name}>")
        for key, item in value.items():
            _element(key, item, list_member, out)
        out.append(f"</{name}>")
    elif kind is list or kind is tuple or isinstance(value, list | tuple):
        out.append(f"<{name}>")
        for item in value:
            _element(list_member, item, list_member, out)
        out.append(f"</{name}>")
    else:
        out.append(f"<{name}>{_text(value)}</{name}>")


def query_response(
    service: str, action: str, result: Mapping[str, Any] | None, request_id: str
) -> bytes:
    """An IAM/STS success: ``<ActionResponse><ActionResult>…</ActionResult><ResponseMetadata>``."""
    out = [f'<{action}Response xmlns="{NAMESPACES[service]}">']
    if result is not None:
        _element(f"{action}Result", result, "member", out)
    out.append(f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>")
    out.append(f"</{action}Response>\n")
    return "".join(out).encode("utf-8")


def query_error(
    code: str, message: str, sender_fault: bool, request_id: str, service: str = "iam"
) -> bytes:
    """An IAM/STS error: ``<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/>``."""
    kind = "Sender" if sender_fault else "Receiver"
    return (
        f'<ErrorResponse xmlns="{NAMESPACES[service]}">'
        f"<Error><Type>{kind}</Type><Code>{xml_text(code)}</Code>"
        f"<Message>{xml_text(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>\n"
    ).encode()


def ec2_response(action: str, result: Mapping[str, Any], request_id: str) -> bytes:
    """An EC2 success: camelCase members directly under ``<ActionResponse>``, lists of ``item``."""
    out = [
        f'<{action}Response xmlns="{NAMESPACES["ec2"]}">',
        f"<requestId>{request_id}</requestId>",
    ]
    for key, value in result.items():
        _element(key, value, "item", out)
    out.append(f"</{action}Response>\n")
    return "".join(out).encode("utf-8")


def ec2_error(code: str, message: str, request_id: str) -> bytes:
    """An EC2 error: ``<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/>``."""
    return (
        f"<Response><Errors><Error><Code>{xml_text(code)}</Code>"
        f"<Message>{xml_text(message)}</Message></Error></Errors>"
        f"<RequestID>{request_id}</RequestID></Response>\n"
    ).encode()
