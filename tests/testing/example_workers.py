"""The workers that docs/testing.md tests (there they are ``myworkers``): one asyncio task and
one thread that run only while their instance leads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Protocol

from leaderelection import ElectionProtocol, SyncElectionProtocol


class Reports(Protocol):
    async def rebuild(self, *, fencing_token: int) -> None: ...


def rebuild_reports_while_leading(
    election: ElectionProtocol, reports: Reports, *, every: float = 60.0
) -> None:
    @election.while_leader
    async def rebuild_periodically() -> None:
        token = election.fencing_token
        while token is not None:  # cancelled when the term ends
            await reports.rebuild(fencing_token=token)
            await asyncio.sleep(every)


def purge_while_leading(
    election: SyncElectionProtocol, purge: Callable[[int], object], *, every: float = 60.0
) -> None:
    @election.while_leader
    def purge_periodically(term_over: threading.Event) -> None:
        token = election.fencing_token
        while token is not None and not term_over.is_set():
            purge(token)
            term_over.wait(every)  # wakes at once when the term ends
