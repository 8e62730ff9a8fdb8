"""The chaos suite's short profile: a fixed seed, a 1 s lease, every fault type twice.

The long soak is ``nox -s chaos -- --minutes 30``; both run the same runner and checker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.checker import check, format_table
from tests.chaos.runner import FAULTS, ChaosSettings, run_chaos

pytestmark = [pytest.mark.redis, pytest.mark.timeout(420)]


async def test_short_chaos_profile_keeps_every_safety_property(tmp_path: Path) -> None:
    settings = ChaosSettings(seed=20261126, faults=2 * len(FAULTS), candidates=3, ttl=1.0)
    run = await run_chaos(settings, tmp_path)
    report = check(tmp_path)
    table = format_table(report)
    print(table)  # with -s, the figures; on failure, pytest shows them too

    assert run.injected == settings.faults, table
    assert all(report.rows[name].injected == 2 for name in FAULTS), table
    # S1, S2, S3 and L2: no overlap of is_leader intervals, no fenced write applied out of
    # token order or after a newer term began, no token regression, callbacks balanced, no
    # step-down without a fault.
    assert report.safe, table
    # L1 as liveness: after every fault a leader came back (the latency is in the table).
    assert report.total.no_leader == 0, table
    assert report.writes_accepted > 0, table
    # A leader task that blocked the loop for 3 leases, after its fence's local check passed,
    # sent its write afterwards: Redis refused it, once per block.
    block = report.rows["block_loop"]
    assert block.rejected_at_redis >= block.injected, table
