"""What users need to test code that uses leaderelection, without Redis and without sleeping.

- :class:`FakeLeaderElection`: a test double of :class:`leaderelection.LeaderElection` with the
  same surface and semantics, whose terms start and end when the test says so (``elect()``,
  ``depose()``, ``hand_over()``); each control returns once the callbacks it caused have run.
- :class:`FakeSyncLeaderElection`: the same for :class:`leaderelection.sync.LeaderElection`,
  with blocking controls and callbacks and ``while_leader`` functions in threads.
- :class:`FakeElectionGroup`: several doubles of one election, with one leader at most, one
  fencing-token counter and one view of who leads.

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

See ``docs/testing.md``.
"""

from ._double import FakeElectionGroup, FakeLeaderElection, FakeSyncLeaderElection

__all__ = ["FakeElectionGroup", "FakeLeaderElection", "FakeSyncLeaderElection"]
