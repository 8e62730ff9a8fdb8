"""ElectionProtocol and SyncElectionProtocol: the public surfaces of the elections, as types.

Code that only needs what an election offers (the FastAPI integration, an app's own helpers) can
accept an ``ElectionProtocol`` (or, for ``leaderelection.sync.LeaderElection``, a
``SyncElectionProtocol``) and so take the real election or the test double of
``leaderelection.testing`` alike.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

from ._config import ElectionConfig
from ._core import ElectionStatistics
from ._fence import Fence, SyncFence
from ._info import LeaderInfo
from ._observer import LeaderChange

__all__ = ["ElectionProtocol", "SyncElectionProtocol"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=Callable[[], object])
J = TypeVar("J", bound=Callable[[threading.Event], object])


@runtime_checkable
class ElectionProtocol(Protocol):
    """What :class:`LeaderElection` offers, for code that also takes a test double.

    ``LeaderElection`` and ``leaderelection.testing.FakeLeaderElection`` both provide it. It is
    runtime-checkable: ``isinstance(obj, ElectionProtocol)`` tells whether ``obj`` has every
    member (not their signatures). See :class:`LeaderElection` for what each member does.
    Annotate code that receives an election with it, and it accepts the real election and the
    test doubles alike; ``leaderelection.fastapi.election_lifespan`` takes anything that
    satisfies it.
    """

    @property
    def config(self) -> ElectionConfig:
        """The election's configuration."""
        ...

    @property
    def instance_id(self) -> str:
        """This candidate's id."""
        ...

    @property
    def is_leader(self) -> bool:
        """True while this instance leads."""
        ...

    @property
    def leader_event(self) -> asyncio.Event:
        """An event set exactly while this instance leads."""
        ...

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leading, else None."""
        ...

    def statistics(self) -> ElectionStatistics:
        """An immutable snapshot of the election's state and counters."""
        ...

    def fence(self) -> Fence:
        """A fence bound to the current term, for writes refused once the term is over."""
        ...

    async def get_leader_info(self) -> LeaderInfo | None:
        """Who leads, as stored; None when no one does."""
        ...

    async def get_leader_id(self) -> str | None:
        """The leader's instance id; None when no one leads."""
        ...

    def changes(self) -> AsyncIterator[LeaderChange]:
        """The current leader, then every change of leader."""
        ...

    async def wait_until_leader(self, timeout: float | None = None) -> None:
        """Wait until this instance leads."""
        ...

    async def wait_until_follower(self, timeout: float | None = None) -> None:
        """Wait until this instance does not lead."""
        ...

    def on_become_leader(self, callback: F) -> F:
        """Register a callback run when a term starts."""
        ...

    def on_lose_leadership(self, callback: F) -> F:
        """Register a callback run when a term ends."""
        ...

    def while_leader(self, func: F) -> F:
        """Register an async function run as a task for the length of every term."""
        ...

    async def start(self) -> None:
        """Start campaigning."""
        ...

    async def stop(self) -> None:
        """Stop campaigning and release leadership if held."""
        ...

    async def resign(self) -> None:
        """Hand leadership over now and stay a candidate."""
        ...

    async def __aenter__(self) -> Self:
        """Start, and return the election."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop."""
        ...


@runtime_checkable
class SyncElectionProtocol(Protocol):
    """What :class:`leaderelection.sync.LeaderElection` offers, for code that also takes a test
    double.

    ``leaderelection.sync.LeaderElection`` and ``leaderelection.testing.FakeSyncLeaderElection``
    both provide it (``async_election``, which only the real one has, is left out). It is
    runtime-checkable, as :class:`ElectionProtocol` is.
    """

    @property
    def config(self) -> ElectionConfig:
        """The election's configuration."""
        ...

    @property
    def instance_id(self) -> str:
        """This candidate's id."""
        ...

    @property
    def is_leader(self) -> bool:
        """True while this instance leads."""
        ...

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leading, else None."""
        ...

    def statistics(self) -> ElectionStatistics:
        """An immutable snapshot of the election's state and counters."""
        ...

    def fence(self) -> SyncFence:
        """A blocking fence bound to the current term."""
        ...

    def get_leader_info(self) -> LeaderInfo | None:
        """Who leads, as stored; None when no one does."""
        ...

    def get_leader_id(self) -> str | None:
        """The leader's instance id; None when no one leads."""
        ...

    def wait_until_leader(self, timeout: float | None = None) -> None:
        """Block until this instance leads."""
        ...

    def wait_until_follower(self, timeout: float | None = None) -> None:
        """Block until this instance does not lead."""
        ...

    def on_become_leader(self, callback: C) -> C:
        """Register a function run in a worker thread when a term starts."""
        ...

    def on_lose_leadership(self, callback: C) -> C:
        """Register a function run in a worker thread when a term ends."""
        ...

    def while_leader(self, func: J) -> J:
        """Register a function run in a thread of its own for the length of every term."""
        ...

    def start(self) -> None:
        """Start campaigning."""
        ...

    def stop(self) -> None:
        """Stop campaigning and release leadership if held."""
        ...

    def resign(self) -> None:
        """Hand leadership over now and stay a candidate."""
        ...

    def __enter__(self) -> Self:
        """Start, and return the election."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop."""
        ...
