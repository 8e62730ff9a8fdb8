"""The chaos soak: ``python -m tests.chaos --minutes 30`` (or ``nox -s chaos -- --minutes 30``).

Runs the seeded fault schedule against real redis-servers and candidate processes, then prints the
checker's table. Exits 1 if a safety property failed or liveness was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.checker import check, format_table
from tests.chaos.runner import FAULTS, ChaosSettings, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="run time (default: 10)")
    parser.add_argument(
        "--faults", type=int, default=100_000, help="stop after this many faults (default: none)"
    )
    parser.add_argument("--seed", type=int, default=int(time.time()), help="schedule seed")
    parser.add_argument("--candidates", type=int, default=4, choices=range(3, 6))
    parser.add_argument("--ttl", type=float, default=1.0, help="lock_ttl in seconds (default: 1)")
    parser.add_argument("--out", type=Path, help="keep the histories here (default: a temp dir)")
    parser.add_argument("--check", type=Path, help="only check the histories in this directory")
    parser.add_argument(
        "--types", default=",".join(FAULTS), help="comma-separated fault types (default: all)"
    )
    args = parser.parse_args(argv)
    if args.check is not None:
        report = check(args.check)
        print(format_table(report))
        return 0 if report.safe and report.total.no_leader == 0 else 1
    out = args.out or Path(tempfile.mkdtemp(prefix="chaos-"))
    settings = ChaosSettings(
        seed=args.seed,
        faults=args.faults,
        minutes=args.minutes,
        candidates=args.candidates,
        ttl=args.ttl,
        heartbeat=args.ttl / 10,
        retry=args.ttl / 5,
        types=tuple(args.types.split(",")),
    )
    print(f"chaos: seed {settings.seed}, {settings.candidates} candidates, histories in {out}")
    sys.stdout.flush()
    asyncio.run(run_chaos(settings, out))
    report = check(out)
    print(format_table(report))
    return 0 if report.safe and report.total.no_leader == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
