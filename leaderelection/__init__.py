"""Asyncio leader election on Redis or Valkey: exactly one leader, fencing tokens, fast handoff.

Quick start::

    from leaderelection import ElectionConfig, LeaderElection

    config = ElectionConfig(name="billing")
    async with LeaderElection("redis://localhost:6379/0", config) as election:
        if election.is_leader:
            ...

See the README and ``docs/`` for the guarantees and their limits.
"""

import logging

from ._callbacks import ErrorHandler
from ._clock import Clock, MonotonicClock
from ._config import ElectionConfig, parse_duration
from ._election import ElectionStatistics, LeaderElection
from ._exceptions import (
    ConfigurationError,
    CorruptLeaderInfoError,
    CrossSlotError,
    ElectionNotRunningError,
    LeaderElectionError,
    NotLeaderError,
    ReplicasMissingError,
    StoreAuthenticationError,
    StoreError,
    StoreReadOnlyError,
    StoreUnavailableError,
    WrongKeyTypeError,
)
from ._fence import Fence, FenceResult
from ._info import LeaderInfo
from ._leader_only import leader_only
from ._observer import LeaderChange, LeaderObserver
from ._protocol import ElectionProtocol, SyncElectionProtocol

__all__ = [
    "Clock",
    "ConfigurationError",
    "CorruptLeaderInfoError",
    "CrossSlotError",
    "ElectionConfig",
    "ElectionNotRunningError",
    "ElectionProtocol",
    "ElectionStatistics",
    "ErrorHandler",
    "Fence",
    "FenceResult",
    "LeaderChange",
    "LeaderElection",
    "LeaderElectionError",
    "LeaderInfo",
    "LeaderObserver",
    "MonotonicClock",
    "NotLeaderError",
    "ReplicasMissingError",
    "StoreAuthenticationError",
    "StoreError",
    "StoreReadOnlyError",
    "StoreUnavailableError",
    "SyncElectionProtocol",
    "WrongKeyTypeError",
    "leader_only",
    "parse_duration",
]

__version__ = "0.1.0"

logging.getLogger("leaderelection").addHandler(logging.NullHandler())
