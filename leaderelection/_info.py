"""LeaderInfo: the record a leader keeps beside its lock, for anyone to read."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["LeaderInfo", "Metadata", "parse_metadata"]

_METADATA_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_METADATA_MAX_ENTRIES = 32
_METADATA_MAX_VALUE = 1024
_METADATA_MAX_BYTES = 4096


class FrozenMetadata(dict[str, str]):
    """A read-only ``dict[str, str]``: the metadata of a frozen config or record.

    It is a ``dict`` (JSON, ``==`` and ``model_dump`` work as usual) that refuses changes and can
    be hashed, like the frozen models that hold it.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("metadata is read-only: build a new config with the metadata you want")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[type[FrozenMetadata], tuple[dict[str, str]]]:
        return (FrozenMetadata, (dict(self),))  # pickle and copy rebuild it whole

    def __copy__(self) -> FrozenMetadata:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenMetadata:
        return self  # read-only strings: nothing to copy


def parse_metadata(value: object) -> dict[str, str]:
    """Read metadata from a mapping, a JSON object, or ``"key=value,key=value"`` text.

    The text forms are what ``LEADER_ELECTION_METADATA`` and ``--metadata`` take. Keys are 1 to 64
    characters of ``A-Z a-z 0-9 _ . -``; values are strings of at most 1024 characters; at most
    32 entries and 4 KB of JSON in all, because the record is rewritten on every heartbeat.

    Raises:
        ValueError: the value cannot be read or breaks a limit; the message says which.
    """
    if isinstance(value, Mapping):
        items = dict(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"metadata is not a valid JSON object: {exc}") from None
            if not isinstance(loaded, dict):
                raise ValueError("metadata JSON must be an object of strings")
            items = loaded
        else:
            items = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, sep, val = part.partition("=")
                if not sep:
                    raise ValueError(
                        f"cannot read metadata entry {part!r}: write key=value pairs separated "
                        "by commas (url=http://10.0.0.5:8000,zone=eu-1) or a JSON object"
                    )
                items[key.strip()] = val.strip()
    else:
        raise ValueError(
            f"metadata must be a mapping of strings, a JSON object or 'key=value,...' text, got "
            f"{type(value).__name__}"
        )
    if len(items) > _METADATA_MAX_ENTRIES:
        raise ValueError(f"metadata has {len(items)} entries; at most {_METADATA_MAX_ENTRIES}")
    for key, val in items.items():
        if not isinstance(key, str) or not _METADATA_KEY.fullmatch(key):
            raise ValueError(
                f"metadata key {key!r} is not allowed: use 1 to 64 characters of A-Z a-z 0-9 _ . -"
            )
        if not isinstance(val, str):
            raise ValueError(
                f"metadata value of {key!r} must be a string, got {type(val).__name__}"
            )
        if len(val) > _METADATA_MAX_VALUE:
            raise ValueError(
                f"metadata value of {key!r} has {len(val)} characters; at most "
                f"{_METADATA_MAX_VALUE}"
            )
    size = len(json.dumps(items, separators=(",", ":")).encode())
    if size > _METADATA_MAX_BYTES:
        raise ValueError(
            f"metadata takes {size} bytes as JSON; at most {_METADATA_MAX_BYTES} (it is rewritten "
            "on every heartbeat)"
        )
    return items


Metadata = Annotated[
    dict[str, str], BeforeValidator(parse_metadata), AfterValidator(FrozenMetadata)
]
"""Metadata as configured: read from any of the forms, checked against the limits."""

StoredMetadata = Annotated[dict[str, str], AfterValidator(FrozenMetadata)]
"""Metadata as read from a record: any string pairs (another version may allow more)."""


class LeaderInfo(BaseModel):
    """Who leads an election, as stored (JSON) in the election's info key.

    Written with the lock when a term starts and rewritten on every heartbeat; it expires with the
    lock, so a record present in Redis belongs to a live (or not yet expired) lease. A frozen
    pydantic model: ``info.model_dump(mode="json")`` gives a JSON-ready dict, and
    ``LeaderInfo.model_validate_json(raw)`` parses a record read from Redis yourself.

    Attributes:
        instance_id: The leader's instance id.
        hostname: The leader's host.
        pid: The leader's process id.
        started_at: When the term started: a timezone-aware UTC datetime, from the leader's
            wall clock.
        last_heartbeat: When the leader last renewed: a timezone-aware UTC datetime, from the
            leader's wall clock.
        fencing_token: The term's fencing token; strictly increasing across terms.
        election: The election's name.
        metadata: What the leader advertises (``ElectionConfig.metadata``), for example
            ``{"url": "http://10.0.0.5:8000"}`` so followers can point clients to it; empty when
            none was configured. Read-only.
    """

    model_config = ConfigDict(frozen=True)

    instance_id: str
    hostname: str
    pid: int
    started_at: AwareDatetime
    last_heartbeat: AwareDatetime
    fencing_token: int = Field(ge=0)
    election: str
    metadata: StoredMetadata = Field(default_factory=FrozenMetadata)

    def heartbeat_age(self, now: datetime) -> float:
        """Seconds between ``last_heartbeat`` and ``now``, a timezone-aware datetime such as
        ``datetime.now(UTC)``. It compares two wall clocks, so it includes any clock skew
        between the leader's host and this one."""
        return (now - self.last_heartbeat).total_seconds()
