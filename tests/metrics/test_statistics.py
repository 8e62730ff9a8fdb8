"""ElectionStatistics stays an immutable, hashable snapshot with its new breakdowns."""

from __future__ import annotations

import pytest

from leaderelection import ElectionConfig, ElectionStatistics
from leaderelection.testing import FakeClock
from tests.election.conftest import MakeElection


async def test_a_snapshot_is_hashable_and_its_breakdowns_read_only(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    election = make_election(config)
    await election.start()
    await clock.advance(3.5)
    stats = election.statistics()
    assert isinstance(hash(stats), int)
    assert isinstance(hash(ElectionStatistics.initial("x")), int)
    with pytest.raises(TypeError):
        stats.leadership_lost["resigned"] = 5  # type: ignore[index]
    # A snapshot: later events do not change it.
    await election.resign()
    assert stats.leadership_lost["resigned"] == 0
    assert election.statistics().leadership_lost["resigned"] == 1
    assert stats != election.statistics()
