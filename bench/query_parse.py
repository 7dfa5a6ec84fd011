"""Query parameter parsing against body size, up to the 1 MiB the API accepts (issue 16, item 3).

A TagRole body of N tags (``Tags.member.N.Key``/``Value``) is parsed as the controller parses
every request before authorizing it: the form body into parameters (``parse_form``), then the
parameters into TagRole's typed input (``parse_input``), which refuses more than 50 tags before
reading any. The last column parses the same body with the tag list's bound lifted, so that every
member is read and validated: the worst the parser can be made to do. Milliseconds (median of
``--repeats``) and microseconds per KiB; flat µs/KiB means linear.

    .venv/bin/python bench/query_parse.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from urllib.parse import urlencode

import controller.iam
from controller.errors import ValidationError
from controller.iam.shapes import TAG_LIST
from controller.query import Field, ListOf, Struct, parse_form, parse_input

SIZES_KIB = (16, 64, 128, 256, 512, 1024)


def tag_role_body(size: int) -> str:
    """A TagRole form body of about ``size`` bytes (never more)."""
    fields = [("Action", "TagRole"), ("Version", "2010-05-08"), ("RoleName", "bench")]
    body = urlencode(fields)
    number = 0
    while True:
        number += 1
        more = urlencode(
            [(f"Tags.member.{number}.Key", f"k{number}"), (f"Tags.member.{number}.Value", "v")]
        )
        if len(body) + 1 + len(more) > size:
            return body
        body += "&" + more


def _milliseconds(call: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()

    action = controller.iam.registry.get("iam", "TagRole")
    assert action is not None
    unbounded = Struct(
        tuple(
            Field(item.name, ListOf(TAG_LIST.member, cap=10**6), wire_name=item.wire_name)
            if item.name == "Tags"
            else item
            for item in action.input.fields
        )
    )

    def refused(params: dict[str, str]) -> None:
        try:
            parse_input(params, action.input)
        except ValidationError:
            return
        raise SystemExit("TagRole with more than 50 tags was not refused")

    print(f"TagRole bodies; ms (median of {options.repeats}), µs per KiB in brackets")
    header = ("KiB", "tags", "parse_form", "TagRole input", "every tag read")
    print(f"{header[0]:>6}{header[1]:>8}{header[2]:>20}{header[3]:>20}{header[4]:>20}")
    for size_kib in SIZES_KIB:
        body = tag_role_body(size_kib * 1024)
        kib = len(body) / 1024
        params = dict(parse_form(body))
        tags = (len(params) - 3) // 2
        row = [
            _milliseconds(lambda body=body: dict(parse_form(body)), options.repeats),
            _milliseconds(lambda params=params: refused(params), options.repeats),
            _milliseconds(lambda params=params: parse_input(params, unbounded), options.repeats),
        ]
        cells = "".join(f"{ms:10.1f} ({ms * 1000 / kib:5.0f})" for ms in row)
        print(f"{kib:6.0f}{tags:8d}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
