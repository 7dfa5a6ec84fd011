"""agent.nftables's pure part: the steering's nf_tables messages are those nft 1.0.6 sends for
`agent.steer.ruleset`'s text, and the kernel's answers are read as they come."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from agent import nftables as nf
from agent import steer
from agent.names import InvalidName

NAMESPACE = "rc-i-0123456789abcdef0"
CAPTURED = Path(__file__).parent.parent / "data" / "nft-1.0.6-steering-batch.hex"
HEADER = struct.Struct("=IHHII")


def split(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, sequence, body) of each netlink message in `data`."""
    return [(kind, flags, sequence, body) for kind, flags, sequence, body in nf.messages_in(data)]


def nft_batch() -> list[tuple[int, int, int, bytes]]:
    lines = [line for line in CAPTURED.read_text().splitlines() if not line.startswith("#")]
    return split(b"".join(bytes.fromhex(line) for line in lines))


def test_the_steering_batch_is_what_nft_sends_for_the_ruleset_text() -> None:
    # nft 1.0.6 asked no acknowledgements; each of ours does (and nothing else differs).
    ours = split(nf.batch(steer.install_batch(NAMESPACE, "vnet7", 3, 5), 0))
    theirs = nft_batch()
    assert len(ours) == len(theirs) == 10
    for (kind, flags, sequence, body), (nft_kind, nft_flags, nft_sequence, nft_body) in zip(
        ours, theirs, strict=True
    ):
        assert (kind, sequence, body) == (nft_kind, nft_sequence, nft_body)
        batch_frame = kind in (nf.NFNL_MSG_BATCH_BEGIN, nf.NFNL_MSG_BATCH_END)
        assert flags == (nft_flags if batch_frame else nft_flags | nf.NLM_F_ACK)


def test_the_removal_batch_makes_the_table_if_missing_then_deletes_it() -> None:
    ours = split(nf.batch(steer.removal_batch(NAMESPACE), 0))
    theirs = nft_batch()  # its first two requests are the same "table {}" and "delete table"
    assert [(kind, body) for kind, _f, _s, body in ours[1:3]] == [
        (kind, body) for kind, _f, _s, body in theirs[1:3]
    ]
    assert ours[0][0] == nf.NFNL_MSG_BATCH_BEGIN and ours[-1][0] == nf.NFNL_MSG_BATCH_END


def test_the_batch_is_framed_with_the_nftables_subsystem_and_numbered_in_order() -> None:
    messages = steer.install_batch(NAMESPACE, "vnet7", 3, 5)
    framed = split(nf.batch(messages, 41))
    assert [sequence for _k, _f, sequence, _b in framed] == list(range(41, 41 + len(messages) + 2))
    for _kind, _flags, _sequence, body in (framed[0], framed[-1]):
        assert body == b"\x00\x00\x00\x0a"  # AF_UNSPEC, version 0, res_id NFNL_SUBSYS_NFTABLES
    for (kind, flags, _sequence, body), message in zip(framed[1:-1], messages, strict=True):
        assert kind == nf.SUBSYSTEM << 8 | message.kind
        assert flags & (nf.NLM_F_REQUEST | nf.NLM_F_ACK) == nf.NLM_F_REQUEST | nf.NLM_F_ACK
        assert body[0] == nf.NETDEV


def test_each_rule_is_bound_to_the_indexes_it_was_given() -> None:
    one = steer.install_batch(NAMESPACE, "vnet7", 3, 5)
    other = steer.install_batch(NAMESPACE, "vnet7", 300, 500)
    changed = [a.label for a, b in zip(one, other, strict=True) if a != b]
    assert changed == [
        f"NEWRULE in chain tap of table rolecall-{NAMESPACE} (ARP to the veth)",
        f"NEWRULE in chain tap of table rolecall-{NAMESPACE} (IPv4 to the veth)",
        f"NEWRULE in chain veth of table rolecall-{NAMESPACE} (all to the tap)",
    ]
    assert nf.interface_index(300) in other[-1].attributes


def test_a_bad_tap_or_namespace_never_becomes_a_message() -> None:
    with pytest.raises(steer.InvalidTap):
        steer.install_batch(NAMESPACE, "lo", 1, 5)
    with pytest.raises(InvalidName):
        steer.removal_batch("../x")


def test_attributes_are_padded_to_four_bytes_and_nested_ones_flagged() -> None:
    assert nf.string(3, "tap") == b"\x08\x00\x03\x00tap\x00"
    assert nf.string(3, "veth") == b"\x09\x00\x03\x00veth\x00\x00\x00\x00"
    assert nf.be32(2, -500) == b"\x08\x00\x02\x00\xff\xff\xfe\x0c"
    assert nf.nested(4, nf.be32(1, 0)) == b"\x0c\x00\x04\x80\x08\x00\x01\x00\x00\x00\x00\x00"


def test_the_table_names_are_read_from_a_dump_message() -> None:
    body = b"\x05\x00\x00\x00" + nf.string(1, "rolecall-rc-i-01234567") + nf.be32(2, 0)
    assert nf.attributes_of(body)[1] == b"rolecall-rc-i-01234567\x00"


def test_a_truncated_answer_is_an_error_not_a_crash() -> None:
    whole = HEADER.pack(40, nf.NLMSG_ERROR, 0, 1, 0) + b"\x00" * 24
    with pytest.raises(nf.TransactionError) as raised:
        nf.messages_in(whole[:30])
    assert raised.value.errno == errno.EPROTO


def test_an_error_is_said_with_its_name() -> None:
    assert nf.error_text(errno.ENOENT) == "No such file or directory (ENOENT)"


def ack(sequence: int, code: int) -> tuple[int, int, int, bytes]:
    """The kernel's answer to request `sequence`: NLMSG_ERROR with -`code` (0: done)."""
    return (nf.NLMSG_ERROR, 0, sequence, struct.pack("=i", -code) + b"\x00" * 16)


def test_every_acknowledgement_is_waited_for_and_the_first_refusal_is_named() -> None:
    messages = steer.install_batch(NAMESPACE, "vnet7", 3, 5)  # 8 requests, numbered 11 to 18
    waiting = set(range(11, 19))
    refused: dict[int, int] = {}
    nf.acknowledged([ack(11, 0), ack(12, 0), ack(99, errno.EPERM)], 10, waiting, refused)
    assert waiting == set(range(13, 19)) and refused == {}
    # The chain's device refused; the rules after it fail because of it, in any order.
    answers = [ack(17, errno.ENOENT), ack(13, 0), ack(15, errno.ENOENT), ack(14, errno.ENODEV)]
    nf.acknowledged([*answers, ack(16, errno.ENOENT), ack(18, errno.ENOENT)], 10, waiting, refused)
    assert waiting == set()
    error = nf.refusal(messages, 10, refused)
    assert error is not None and error.errno == errno.ENODEV
    assert str(error) == (
        f"[Errno 19] nf_tables refused NEWCHAIN tap of table rolecall-{NAMESPACE} on device vnet7"
        " (request 4 of 8): No such device (ENODEV); nothing of the batch was applied"
    )
    assert nf.refusal(messages, 10, {}) is None


def test_a_batch_refused_as_a_whole_is_an_error_at_once() -> None:
    with pytest.raises(nf.TransactionError, match=r"refused the batch: Operation not permitted"):
        nf.acknowledged([ack(10, errno.EPERM)], 10, {11, 12}, {})
