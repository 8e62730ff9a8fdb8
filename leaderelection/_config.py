"""ElectionConfig: the timings, identity and keys of one election, validated once.

Durations accept numbers (seconds), :class:`datetime.timedelta`, and strings in the style of Go's
``time.ParseDuration`` (``"500ms"``, ``"10s"``, ``"1m30s"``, ``"1.5h"``), and are stored as
``timedelta``. The cross-field rule is client-go's: ``heartbeat_interval < renew_deadline <
lock_ttl``, so that a leader steps down locally before its lease can expire in Redis.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import socket
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from redis.crc import key_slot

from ._exceptions import ConfigurationError
from ._info import FrozenMetadata, Metadata

__all__ = ["ElectionConfig", "config_argument", "new_instance_id", "parse_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_MAX_SECONDS = 30 * 24 * 3600.0
_MIN_MARGIN = timedelta(milliseconds=10)  # between the timings, so every deadline is usable


def parse_duration(value: object) -> timedelta:
    """Convert a number of seconds, a timedelta or a string such as ``"1m30s"`` to a timedelta.

    Args:
        value: ``int``/``float`` seconds, a ``timedelta``, or a string made of one or more
            ``<number><unit>`` parts with units ``ns``, ``us``, ``ms``, ``s``, ``m``, ``h``; a bare
            number string means seconds.

    Returns:
        The duration, always greater than zero.

    Raises:
        ValueError: the value is not a duration or is not positive.
    """
    if isinstance(value, bool):
        raise ValueError(
            "expected a duration such as 10, 2.5, '500ms', '10s' or '1m30s', not a bool"
        )
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"cannot read {value!r} as a duration: use seconds (10, 2.5) or units such as "
                    "'500ms', '10s', '1m30s', '1h'"
                )
    else:
        raise ValueError(
            f"expected a duration (seconds, timedelta or '10s'), got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive and finite, got {value!r}")
    if seconds < 0.001:
        raise ValueError(f"a duration must be at least 1ms, got {value!r}")
    if seconds > _MAX_SECONDS:
        raise ValueError(f"a duration must be at most 30 days, got {value!r}")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _count(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a whole number such as 0, 1 or 2, not a bool")
    return value


Count = Annotated[int, BeforeValidator(_count)]

_ENV = {
    "lock_ttl": "LEADER_ELECTION_LOCK_TTL",
    "heartbeat_interval": "LEADER_ELECTION_HEARTBEAT_INTERVAL",
    "retry_interval": "LEADER_ELECTION_RETRY_INTERVAL",
    "renew_deadline": "LEADER_ELECTION_RENEW_DEADLINE",
    "instance_id": "LEADER_ELECTION_INSTANCE_ID",
    "hostname": "LEADER_ELECTION_HOSTNAME",
    "name": "LEADER_ELECTION_NAME",
    "key_prefix": "LEADER_ELECTION_KEY_PREFIX",
    "metadata": "LEADER_ELECTION_METADATA",
    "min_replicas": "LEADER_ELECTION_MIN_REPLICAS",
    "restart_protection": "LEADER_ELECTION_RESTART_PROTECTION",
    "priority": "LEADER_ELECTION_PRIORITY",
}


def _hash_tag(key: str) -> str | None:
    """The Redis Cluster hash tag of ``key`` (the text inside its first ``{...}``), if any."""
    start = key.find("{")
    if start == -1:
        return None
    end = key.find("}", start + 1)
    if end == -1 or end == start + 1:
        return None
    return key[start + 1 : end]


def _sibling(key: str, suffix: str) -> str:
    """A key in the cluster slot of ``key``: ``key + suffix``, hash-tagging ``key`` if needed."""
    return key + suffix if _hash_tag(key) is not None else "{" + key + "}" + suffix


class ElectionConfig(BaseModel):
    """The settings of one election: a frozen pydantic model, validated once when it is made.

    Durations (``lock_ttl``, ``heartbeat_interval``, ``retry_interval``, ``renew_deadline``)
    accept seconds (``int`` or ``float``), a ``datetime.timedelta``, or a string such as
    ``"500ms"``, ``"10s"`` or ``"1m30s"`` (see :func:`parse_duration`), and are stored as
    ``timedelta``. Each must be from 1 ms to 30 days.

    The timings must satisfy ``heartbeat_interval < renew_deadline < lock_ttl``, each at least
    10 ms apart: a leader must get to renew before it gives up, and give up before its lease in
    Redis can expire. Lowering ``lock_ttl`` alone can break this: ``ElectionConfig(lock_ttl="3s")``
    derives a ``renew_deadline`` of 2 s, shorter than the default ``heartbeat_interval``.

    Errors: ``ElectionConfig(...)`` and :meth:`from_env` raise :class:`ConfigurationError` (a
    ``LeaderElectionError`` and a ``ValueError``) whose message names each invalid field and
    the value it got. Pydantic's own entry points, ``ElectionConfig.model_validate(data)`` and
    ``model_validate_json(text)``, raise pydantic's ``ValidationError`` instead (also a
    ``ValueError``), whose one error carries the same message; ``except ValueError`` catches
    both. ``model_copy(update=...)`` and ``model_construct()`` skip validation, and a copy keeps
    the old keys: to change a setting, build a new config.

    The keys are resolved at construction (``lock_key`` and ``info_key`` always read as the
    resolved names), and must differ and share one Redis Cluster hash slot; ``name`` must not
    contain ``{`` or ``}``, since it becomes their hash tag.

    One config can serve many candidates: with ``instance_id=None`` every ``LeaderElection``
    makes its own ``hostname-pid-random`` id, so several uvicorn workers on one host stay
    distinct.

    Attributes:
        name: The election's name. Candidates with the same name (more precisely, the same
            keys) on the same Redis database compete. It becomes the keys' hash tag, so it
            must not contain ``{`` or ``}``. 1 to 200 characters. Env ``LEADER_ELECTION_NAME``.
        key_prefix: The prefix of the default key names, ``<key_prefix>:{<name>}:lock`` and so
            on. 1 to 200 characters. Env ``LEADER_ELECTION_KEY_PREFIX``.
        lock_key: The lock key (the Go package's ``RedisKeyName``). Derived from
            ``key_prefix`` and ``name`` unless given; always reads as the resolved key. At
            most 512 characters.
        info_key: The leader-info key (the Go package's ``RedisInfoKeyName``). Derived from
            ``key_prefix`` and ``name``, or, with a ``lock_key`` given, the lock key's sibling
            in its hash slot; always reads as the resolved key. At most 512 characters.
        lock_ttl: The length of the lease in Redis. If the leader dies, a follower takes over
            at most this long after its last renewal. Env ``LEADER_ELECTION_LOCK_TTL``.
        heartbeat_interval: How often the leader renews its lease: one round trip per
            interval. Env ``LEADER_ELECTION_HEARTBEAT_INTERVAL``.
        retry_interval: The base delay of the backoff after Redis errors, and how long
            ``resign()`` holds this instance back. Not a polling interval: followers sleep
            until the lease can expire. Env ``LEADER_ELECTION_RETRY_INTERVAL``.
        renew_deadline: A leader that has not renewed successfully within this time of
            sending its last successful renewal steps down locally. Derived as 2/3 of
            ``lock_ttl`` when not given (or None). Env ``LEADER_ELECTION_RENEW_DEADLINE``.
        instance_id: This candidate's id, as reported in logs, ``LeaderInfo`` and statistics.
            None: each election makes ``<hostname>-<pid>-<8 hex digits>``. 1 to 200
            characters. Env ``LEADER_ELECTION_INSTANCE_ID``.
        hostname: Reported in ``LeaderInfo``, and part of the default instance id. 1 to 255
            characters. Env ``LEADER_ELECTION_HOSTNAME``.
        metadata: String pairs a leader advertises in its ``LeaderInfo``, for example
            ``{"url": "http://10.0.0.5:8000"}`` so that followers can send clients to it. Takes a
            mapping, a JSON object, or ``"key=value,key=value"`` text; keys of 1 to 64
            characters ``A-Z a-z 0-9 _ . -``, values of at most 1024 characters, at most 32
            entries and 4 KB in all. Read-only. Env ``LEADER_ELECTION_METADATA``.
        min_replicas: Replicas that must acknowledge a write before it counts: a term begins,
            and a renewal extends the local lease, only once this many replicas of the lock's
            server acknowledged it (``WAIT``, in the same round trip, within the call's
            deadline). Closes most of the window in which a failover loses a just-granted term,
            for one more round trip per write. 0 to 100; 0 waits for none.
            Env ``LEADER_ELECTION_MIN_REPLICAS``.
        restart_protection: Hold a free lock back on a server that started less than
            ``ceil(lock_ttl) + 1`` seconds ago, in case it lost the lock of a leader that is
            still alive. Turn it off only with ``appendfsync always``, or when a lost lease
            costs nothing (local development).
            Env ``LEADER_ELECTION_RESTART_PROTECTION`` (``true``/``false``, ``yes``/``no``,
            ``1``/``0``).
        priority: -100 to 100. When the lock is free (a release, an expired lease), a
            candidate of higher priority gets the first chance to take it: lower ones wait 2 ms
            per level below the highest waiting (at most 20 ms). A sitting leader is never
            preempted: priority decides who takes a free lock, never who holds it.
            Env ``LEADER_ELECTION_PRIORITY``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    ENV_NAMES: ClassVar[Mapping[str, str]] = _ENV
    """Each field that :meth:`from_env` reads, mapped to its variable, for example
    ``"lock_ttl"`` to ``"LEADER_ELECTION_LOCK_TTL"``."""

    name: str = Field(default="default", min_length=1, max_length=200)
    key_prefix: str = Field(default="leaderelection", min_length=1, max_length=200)
    lock_key: str = Field(default="", max_length=512)
    info_key: str = Field(default="", max_length=512)
    lock_ttl: Duration = timedelta(seconds=10)
    heartbeat_interval: Duration = timedelta(seconds=3)
    retry_interval: Duration = timedelta(seconds=2)
    renew_deadline: Duration = timedelta(seconds=10) * 2 / 3
    instance_id: str | None = Field(default=None, min_length=1, max_length=200)
    hostname: str = Field(default_factory=socket.gethostname, min_length=1, max_length=255)
    metadata: Metadata = Field(default_factory=FrozenMetadata)
    min_replicas: Count = Field(default=0, ge=0, le=100)
    restart_protection: bool = True
    priority: Count = Field(default=0, ge=-100, le=100)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from exc

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("name", "default")
        prefix = data.get("key_prefix", "leaderelection")
        if isinstance(name, str) and ("{" in name or "}" in name):
            raise ValueError("name must not contain '{' or '}': it becomes the keys' hash tag")
        if data.get("renew_deadline") is None:
            data.pop("renew_deadline", None)
            with contextlib.suppress(ValueError):  # lock_ttl's own error is the one to report
                data["renew_deadline"] = parse_duration(data.get("lock_ttl", 10)) * 2 / 3
        if not data.get("lock_key"):
            data["lock_key"] = f"{prefix}:{{{name}}}:lock"
            if not data.get("info_key"):
                data["info_key"] = f"{prefix}:{{{name}}}:info"
        elif not data.get("info_key"):
            data["info_key"] = _sibling(str(data["lock_key"]), ":info")
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        deadline = self.renew_deadline
        if not (
            self.heartbeat_interval + _MIN_MARGIN <= deadline
            and deadline + _MIN_MARGIN <= self.lock_ttl
        ):
            raise ValueError(
                "timings must satisfy heartbeat_interval < renew_deadline < lock_ttl, each at "
                "least 10ms apart, got "
                f"heartbeat_interval={_fmt(self.heartbeat_interval)}, "
                f"renew_deadline={_fmt(deadline)}, lock_ttl={_fmt(self.lock_ttl)}: a leader must "
                "get to renew before it gives up, and give up before its lease expires"
            )
        keys = {"lock_key": self.lock_key, "info_key": self.info_key, "fence_key": self.fence_key}
        if len(set(keys.values())) != len(keys) or self.waiting_key in keys.values():
            raise ValueError(
                "lock_key, info_key, the fence key and the waiting key must differ, got "
                f"{ {**keys, 'waiting_key': self.waiting_key} }"
            )
        slots = {name: key_slot(key.encode()) for name, key in keys.items()}
        if len(set(slots.values())) != 1:
            raise ValueError(
                f"the keys of one election must share a Redis Cluster hash slot, got {keys}: put "
                "the same hash tag in both, e.g. lock_key='myapp:{leader}:lock', "
                "info_key='myapp:{leader}:info'"
            )
        return self

    @property
    def fence_key(self) -> str:
        """The key holding the fencing-token counter (never expires)."""
        default_lock = f"{self.key_prefix}:{{{self.name}}}:lock"
        if self.lock_key == default_lock:
            return f"{self.key_prefix}:{{{self.name}}}:fence"
        return _sibling(self.lock_key, ":fence")

    @property
    def waiting_key(self) -> str:
        """The key holding the highest priority among the candidates waiting for the lock (it
        expires two leases after the last of them asked)."""
        return self.fence_key.removesuffix(":fence") + ":waiting"

    @property
    def release_channel(self) -> str:
        """The election's pub/sub channel: releases (which wake waiting followers), new terms
        (for observers) and step-down requests are announced on it."""
        return self.fence_key.removesuffix(":fence") + ":released"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ElectionConfig:
        """Build a config from the ``LEADER_ELECTION_*`` environment variables.

        ``lock_key`` and ``info_key`` have no variables: set ``name`` and ``key_prefix``, or
        pass them as overrides.

        Args:
            environ: The mapping to read; default ``os.environ``. Unset and empty variables
                are ignored.
            **overrides: Fields that win over the environment.

        Raises:
            ConfigurationError: a variable holds an invalid value; the message names the variable.
        """
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for field, var in _ENV.items():
            value = env.get(var, "").strip()
            if value:
                data[field] = value
        data.update(overrides)
        try:
            return cls(**data)
        except ConfigurationError as exc:
            names = ", ".join(
                f"{f}={v}" for f, v in _ENV.items() if f in data and f not in overrides
            )
            if not names:  # every value came from the overrides
                raise
            raise ConfigurationError(f"{exc} (read from the environment: {names})") from exc


def _fmt(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in error["loc"]) or "config"
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            msg = f"unknown field (valid fields: {', '.join(ElectionConfig.model_fields)})"
        parts.append(f"{loc}: {msg} (got {error.get('input')!r})" if loc != "config" else msg)
    return "invalid ElectionConfig: " + "; ".join(parts)


def config_argument(config: object) -> ElectionConfig:
    """The ``config`` argument of an election or observer: None means the defaults.

    Raises:
        ConfigurationError: ``config`` is not an ``ElectionConfig``.
    """
    if config is None:
        return ElectionConfig()
    if not isinstance(config, ElectionConfig):
        raise ConfigurationError(f"config must be an ElectionConfig, got {type(config).__name__}")
    return config


def new_instance_id(config: ElectionConfig) -> str:
    """The config's instance id, else a fresh ``hostname-pid-random`` for this process."""
    if config.instance_id is not None:
        return config.instance_id
    return f"{config.hostname}-{os.getpid()}-{secrets.token_hex(4)}"
