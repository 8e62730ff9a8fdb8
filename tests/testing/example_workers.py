"""The workers that docs/testing.md tests, included there by section: asyncio tasks and a
thread that run only while their instance leads, one of them writing through a fence."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Protocol

from leaderelection import ElectionProtocol, SyncElectionProtocol


class Reports(Protocol):
    async def rebuild(self, *, fencing_token: int) -> None: ...


# --8<-- [start:rebuild]
def rebuild_reports_while_leading(
    election: ElectionProtocol, reports: Reports, *, every: float = 60.0
) -> None:
    @election.while_leader
    async def rebuild_periodically() -> None:
        token = election.fencing_token
        while token is not None:  # cancelled when the term ends
            await reports.rebuild(fencing_token=token)
            await asyncio.sleep(every)
            # --8<-- [end:rebuild]


# --8<-- [start:purge]
def purge_while_leading(
    election: SyncElectionProtocol, purge: Callable[[int], object], *, every: float = 60.0
) -> None:
    @election.while_leader
    def purge_periodically(term_over: threading.Event) -> None:
        token = election.fencing_token
        while token is not None and not term_over.is_set():
            purge(token)
            term_over.wait(every)  # wakes at once when the term ends
            # --8<-- [end:purge]


# --8<-- [start:count-runs]
def count_runs_while_leading(election: ElectionProtocol, key: str, *, every: float = 60.0) -> None:
    @election.while_leader
    async def count_periodically() -> None:
        fence = election.fence()  # bound to this term
        runs = 0
        while True:
            runs += 1
            if not await fence.hset(key, {"runs": runs, "token": fence.token}):
                return  # refused: the term is over
            await asyncio.sleep(every)
            # --8<-- [end:count-runs]
