"""Adversarial wildcard patterns: microseconds per match for 1 to 40 stars (issue 16, item 2).

Each row is a star count; each column a family of patterns built to make a backtracking matcher
blow up, matched against a text it almost matches. The trust-action column is the whole check a
trust policy's Action goes through when stored (compile included: the cache is cleared first);
the others time ``fullmatch`` of the policy engine's compiled globs. The last column is the worst
of the row; the script exits 1 when any match takes longer than ``--bound`` microseconds.

    .venv/bin/python bench/adversarial.py [--max-stars 40] [--text-length 2048] [--bound 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from controller.policy.document import _matches_trust_action
from controller.policy.match import GlobMode, compile_globs


def _glob(pattern: str, mode: GlobMode, text: str) -> Callable[[], object]:
    regex = compile_globs((((pattern, False),),), mode, ignore_case=mode is GlobMode.PLAIN)
    return lambda: regex.fullmatch(text)


def _trust(pattern: str) -> Callable[[], object]:
    def check() -> object:
        compile_globs.cache_clear()
        return _matches_trust_action(pattern)

    return check


def _families(stars: int, length: int) -> dict[str, Callable[[], object]]:
    almost = "a" * length  # no "b", no "X": every pattern below fails at the very end
    arn = "arn:aws:s3:::" + almost
    return {
        "trust sts:*…X": _trust("sts:" + "*" * stars + "X"),
        "*…X": _glob("*" * stars + "X", GlobMode.PLAIN, almost),
        "*?*?…X": _glob("*?" * stars + "X", GlobMode.PLAIN, almost),
        "*a*a…b": _glob("*a" * stars + "b", GlobMode.PLAIN, almost),
        "*a?…b": _glob("*a?" * stars + "b", GlobMode.PLAIN, almost),
        "arn *a…b": _glob("arn:aws:s3:::" + "*a" * stars + "b", GlobMode.RESOURCE, arn),
        "*:*…b": _glob("*:" * min(stars, 5) + "*a" * stars + "b", GlobMode.ARN, arn),
    }


def _microseconds(call: Callable[[], object], repeats: int) -> float:
    """The median of ``repeats`` timings of one call, in microseconds."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-stars", type=int, default=40)
    parser.add_argument("--text-length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bound", type=float, default=500.0, help="µs per match")
    options = parser.parse_args()

    names = list(_families(1, 1))
    width = max(len(name) for name in names) + 2
    print(f"text: {options.text_length} characters; µs per match (median of {options.repeats})")
    print("stars" + "".join(name.rjust(width) for name in names) + "worst".rjust(10))
    worst_overall = 0.0
    for stars in range(1, options.max_stars + 1):
        row = [
            _microseconds(call, options.repeats)
            for call in _families(stars, options.text_length).values()
        ]
        worst = max(row)
        worst_overall = max(worst_overall, worst)
        print(f"{stars:5d}" + "".join(f"{value:{width}.1f}" for value in row) + f"{worst:10.1f}")
    verdict = "met" if worst_overall <= options.bound else "NOT met"
    print(f"worst case {worst_overall:.1f} µs per match; bound {options.bound:.0f} µs: {verdict}")
    return 0 if worst_overall <= options.bound else 1


if __name__ == "__main__":
    sys.exit(main())
