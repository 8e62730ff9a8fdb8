"""The exceptions raised by leaderelection.

Every exception the library raises on purpose derives from :class:`LeaderElectionError`, so one
``except LeaderElectionError`` catches them all::

    LeaderElectionError
    ├── ConfigurationError          bad ElectionConfig field, bad URL (also a ValueError)
    │   └── CrossSlotError          a key written through a Fence is not in the election's slot
    ├── ElectionNotRunningError     waiting on an election that is not started or was stopped
    ├── NotLeaderError              fence() called while this instance does not lead
    └── StoreError                  a problem with the Redis store
        ├── StoreUnavailableError   cannot reach Redis, or it did not answer in time (transient)
        │   └── ReplicasMissingError  fewer replicas than min_replicas acknowledged a write
        ├── StoreAuthenticationError  wrong password, missing ACL permission
        ├── StoreReadOnlyError      connected to a read-only replica
        ├── WrongKeyTypeError       an election key holds a value of another type
        └── CorruptLeaderInfoError  the leader-info record is not valid JSON for LeaderInfo

Redis errors are translated into these at one place, the store, with the original exception kept
as ``__cause__``. ``start()`` raises the permanent ones (authentication, read-only replica, wrong
key type, bad URL) because retrying cannot fix them; transient unavailability is retried with
backoff and logged while ``is_leader`` stays False.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "CorruptLeaderInfoError",
    "CrossSlotError",
    "ElectionNotRunningError",
    "LeaderElectionError",
    "NotLeaderError",
    "ReplicasMissingError",
    "StoreAuthenticationError",
    "StoreError",
    "StoreReadOnlyError",
    "StoreUnavailableError",
    "WrongKeyTypeError",
]


class LeaderElectionError(Exception):
    """Base class of every exception raised by leaderelection."""


class ConfigurationError(LeaderElectionError, ValueError):
    """The configuration or the Redis URL is invalid; the message names what to fix."""


class CrossSlotError(ConfigurationError):
    """On a Redis Cluster, a key written through a Fence is not in the election's hash slot.

    A fenced write checks the election's fence key and writes in one script, and a script runs
    on one node: every key it writes must hash to the election's slot. Name such keys with the
    election's hash tag, e.g. ``myapp:{billing}:progress`` for the election ``billing``.
    """


class ElectionNotRunningError(LeaderElectionError):
    """The election is not running: it was never started, or it was stopped while waiting."""


class NotLeaderError(LeaderElectionError):
    """This instance does not lead: ``fence()`` has no term to bind the fence to."""


class StoreError(LeaderElectionError):
    """A problem with the Redis store."""


class StoreUnavailableError(StoreError):
    """Redis could not be reached or did not answer within the call's deadline.

    Transient: the election retries with backoff and stays a follower meanwhile.
    """


class ReplicasMissingError(StoreUnavailableError):
    """Fewer replicas than ``ElectionConfig.min_replicas`` acknowledged a write in time.

    Transient: a term does not begin (or a renewal does not extend the local lease) until enough
    replicas acknowledge; the election keeps trying meanwhile.
    """


class StoreAuthenticationError(StoreError):
    """Redis refused the credentials, or the ACL user lacks a command or key the election needs."""


class StoreReadOnlyError(StoreError):
    """The server is a read-only replica; point the election at the primary."""


class WrongKeyTypeError(StoreError):
    """An election key holds a value of another type (for example a hash where a string belongs)."""


class CorruptLeaderInfoError(StoreError):
    """The leader-info record exists but is not a valid LeaderInfo JSON document."""
