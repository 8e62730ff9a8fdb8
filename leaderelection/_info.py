"""LeaderInfo: the record a leader keeps beside its lock, for anyone to read."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["LeaderInfo"]


class LeaderInfo(BaseModel):
    """Who leads an election, as stored (JSON) in the election's info key.

    Written with the lock when a term starts and rewritten on every heartbeat; it expires with the
    lock, so a record present in Redis belongs to a live (or not yet expired) lease.

    Attributes:
        instance_id: The leader's instance id.
        hostname: The leader's host.
        pid: The leader's process id.
        started_at: When the term started (UTC, the leader's clock).
        last_heartbeat: When the leader last renewed (UTC, the leader's clock).
        fencing_token: The term's fencing token; strictly increasing across terms.
        election: The election's name.
    """

    model_config = ConfigDict(frozen=True)

    instance_id: str
    hostname: str
    pid: int
    started_at: AwareDatetime
    last_heartbeat: AwareDatetime
    fencing_token: int = Field(ge=0)
    election: str

    def heartbeat_age(self, now: datetime) -> float:
        """Seconds between ``last_heartbeat`` and ``now`` (an aware datetime)."""
        return (now - self.last_heartbeat).total_seconds()
