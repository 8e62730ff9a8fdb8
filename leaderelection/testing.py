"""What users need to test code that uses leaderelection, without Redis and without sleeping.

- :class:`FakeLeaderElection`: a test double of :class:`leaderelection.LeaderElection` with the
  same surface and semantics, whose terms start and end when the test says so (``elect()``,
  ``depose()``, ``hand_over()``); each control returns once the callbacks it caused have run.
- :class:`FakeSyncLeaderElection`: the same for :class:`leaderelection.sync.LeaderElection`,
  with blocking controls and callbacks and ``while_leader`` functions in threads.
- :class:`FakeElectionGroup`: several doubles of one election, with one leader at most, one
  fencing-token counter and one view of who leads; their fences write into its ``data``.
- :class:`FakeClock`, :class:`MemoryServer` and :class:`MemoryStore`: what the library's own
  tests run the real :class:`~leaderelection.LeaderElection` on: a clock that moves only when
  the test moves it, and the lease store's rules in memory (with faults to inject), so that a
  test of timing (lease expiry, failover, a hung store) waits for no real time.

Example::

    from leaderelection import ElectionConfig
    from leaderelection.testing import FakeLeaderElection


    async def test_the_job_runs_only_while_leading() -> None:
        election = FakeLeaderElection(ElectionConfig(name="billing"))
        worker = Worker(election)  # the code under test registers its callbacks
        async with election:
            token = await election.elect()  # become callbacks ran, while_leader tasks started
            assert worker.running_with == token
            await election.depose()  # as if the lease was lost: tasks cancelled, lose ran
            assert worker.running_with is None

The real election on the fake clock::

    clock = FakeClock()
    server = MemoryServer(clock)
    config = ElectionConfig(name="billing")
    async with LeaderElection(None, config, clock=clock, store=server.store(config)) as a:
        server.hanging = True  # the store stops answering
        await clock.advance_until(lambda: not a.is_leader, limit=10)  # renew_deadline, faked

See ``docs/testing.md``.
"""

from ._clock import FakeClock
from ._double import FakeElectionGroup, FakeLeaderElection, FakeSyncLeaderElection, FencedEval
from ._memory import MemoryServer, MemoryStore

__all__ = [
    "FakeClock",
    "FakeElectionGroup",
    "FakeLeaderElection",
    "FakeSyncLeaderElection",
    "FencedEval",
    "MemoryServer",
    "MemoryStore",
]
