"""Benchmark (never a test): what failover costs, over several runs of the two scenarios the
high-availability tests assert (tests/ha/scenarios.py). Root: real namespaces, PostgreSQL run as
``postgres``.

    .venv/bin/python bench/ha.py [--runs 3] [--outage SECONDS] [--only database]

- kill -9 of the controller an agent is connected to (two controllers on one PostgreSQL, an
  agent listing both, a guest fetching credentials, IAM writes through both): how soon the
  agent is on the other controller, and what guests and clients saw;
- the PostgreSQL primary stopped (immediate) and its synchronous standby promoted under IAM
  writes through two controllers on a multi-host DSN: how soon writes succeed again, and what
  the writes in flight got.

Prints one table per scenario (median, min, max of each figure) and the clients' failed calls
by outcome; exits 1 when a run saw a failed guest request or lost an acknowledged write.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.ha.scenarios import controller_killed, primary_lost
from tests.pg import running_cluster


def table(title: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{title} ({len(runs)} runs)\n")
    print("| figure | median | min | max |")
    print("|---|---|---|---|")
    for name in runs[0]:
        values = [run[name] for run in runs]
        print(f"| {name} | {statistics.median(values):g} | {min(values):g} | {max(values):g} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--outage",
        type=float,
        default=0.0,
        help="seconds from the primary's stop to the promotion at least (default: at the first"
        " error answer, as the tests do)",
    )
    parser.add_argument(
        "--only", choices=("controller", "database"), help="run one scenario, not both"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/ha.py needs root (namespaces, PostgreSQL as postgres)", file=sys.stderr)
        return 1
    valid = True
    kills: list[dict[str, float]] = []
    kill_outcomes: Counter[str] = Counter()
    if args.only != "database":
        with running_cluster() as cluster:
            for _ in range(args.runs):
                with (
                    tempfile.TemporaryDirectory(prefix="rolecall-bench-") as work,
                    cluster.database() as dsn,
                    controller_killed(Path(work), dsn) as killed,
                ):
                    kills.append(killed.figures)
                    kill_outcomes.update(killed.api.ledger.outcomes())
                    valid = valid and not killed.guest.failures and not killed.missing
    losses: list[dict[str, float]] = []
    loss_outcomes: Counter[str] = Counter()
    for _ in range(args.runs if args.only != "controller" else 0):
        with (
            tempfile.TemporaryDirectory(prefix="rolecall-bench-") as work,
            primary_lost(Path(work), args.outage) as lost,
        ):
            losses.append(lost.figures)
            loss_outcomes.update(lost.during)
            valid = valid and not lost.guest.failures and not any(lost.missing.values())
    if kills:
        table("kill -9 of the agent's controller", kills)
        print(f"\nclients' failed calls: {dict(kill_outcomes)}")
    if losses:
        table(f"PostgreSQL primary lost, standby promoted (--outage {args.outage:g})", losses)
        print(f"\nclients' failed calls: {dict(loss_outcomes)}")
    if not valid:
        print("\nINVALID: a guest request failed or an acknowledged write was lost")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
