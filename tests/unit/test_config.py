"""ElectionConfig: defaults, durations, cross-field rules, keys, and from_env."""

from __future__ import annotations

import copy
import pickle
from datetime import timedelta

import pytest
from redis.crc import key_slot

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    LeaderElectionError,
    LeaderInfo,
    parse_duration,
)


def test_seed_defaults() -> None:
    c = ElectionConfig()
    assert c.lock_ttl == timedelta(seconds=10)
    assert c.heartbeat_interval == timedelta(seconds=3)
    assert c.retry_interval == timedelta(seconds=2)
    assert c.renew_deadline.total_seconds() == pytest.approx(20 / 3, abs=1e-6)
    assert c.instance_id is None
    assert c.hostname
    assert c.name == "default"


def test_keys_share_a_hash_tag() -> None:
    c = ElectionConfig(name="billing")
    assert c.lock_key == "leaderelection:{billing}:lock"
    assert c.info_key == "leaderelection:{billing}:info"
    assert c.fence_key == "leaderelection:{billing}:fence"
    assert c.release_channel == "leaderelection:{billing}:released"
    assert len({key_slot(k.encode()) for k in (c.lock_key, c.info_key, c.fence_key)}) == 1


def test_key_prefix_and_overrides() -> None:
    c = ElectionConfig(name="jobs", key_prefix="myapp")
    assert c.lock_key == "myapp:{jobs}:lock"
    c = ElectionConfig(lock_key="my-app:leader")
    assert c.lock_key == "my-app:leader"
    assert c.info_key == "{my-app:leader}:info"
    assert c.fence_key == "{my-app:leader}:fence"
    assert key_slot(c.lock_key.encode()) == key_slot(c.info_key.encode())
    c = ElectionConfig(lock_key="app:{x}:lock", info_key="app:{x}:who")
    assert (c.lock_key, c.info_key, c.fence_key) == (
        "app:{x}:lock",
        "app:{x}:who",
        "app:{x}:lock:fence",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("1m30s", 90),
        ("1.5h", 5400),
        ("2", 2),
        (" 250 ms ", 0.25),
        ("1500us", 0.0015),
        (3, 3),
        (0.25, 0.25),
        (timedelta(milliseconds=750), 0.75),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["10x", "", "s", "-1s", "1s2", "1m-3s", 0, -5, True, "nan", [1], None]
)
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"lock_ttl": "10x"}, "lock_ttl"),
        ({"heartbeat_interval": "soon"}, "heartbeat_interval"),
        ({"retry_interval": 0}, "retry_interval"),
        (
            {"lock_ttl": 1, "heartbeat_interval": 2},
            "heartbeat_interval < renew_deadline < lock_ttl",
        ),
        ({"lock_ttl": 10, "renew_deadline": 10}, "heartbeat_interval < renew_deadline < lock_ttl"),
        ({"heartbeat_interval": 7}, "heartbeat_interval=7s"),
        (
            {"heartbeat_interval": "6.666s", "renew_deadline": "6.667s"},
            "at least 10ms apart",
        ),
        ({"lock_ttl": "2.0004s", "renew_deadline": "2.0002s"}, "at least 10ms apart"),
        ({"lock_key": "a", "info_key": "b"}, "hash slot"),
        ({"lock_key": "a", "info_key": "a"}, "must differ"),
        ({"name": "x{y}"}, "name must not contain"),
        ({"name": ""}, "name"),
        ({"nmae": "typo"}, "unknown field"),
        ({"instance_id": ""}, "instance_id"),
    ],
)
def test_invalid_config_names_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid ElectionConfig") as info:
        ElectionConfig(**fields)  # type: ignore[arg-type]
    assert named in str(info.value)
    assert isinstance(info.value, LeaderElectionError)
    assert isinstance(info.value, ValueError)


def test_frozen() -> None:
    c = ElectionConfig()
    with pytest.raises(Exception, match="frozen"):
        c.lock_ttl = timedelta(seconds=1)  # type: ignore[misc]


def test_from_env_reads_every_documented_variable() -> None:
    env = {
        "LEADER_ELECTION_LOCK_TTL": "30s",
        "LEADER_ELECTION_HEARTBEAT_INTERVAL": "10s",
        "LEADER_ELECTION_RETRY_INTERVAL": "5s",
        "LEADER_ELECTION_RENEW_DEADLINE": "20s",
        "LEADER_ELECTION_INSTANCE_ID": "instance-1",
        "LEADER_ELECTION_HOSTNAME": "server-01",
        "LEADER_ELECTION_NAME": "billing",
        "LEADER_ELECTION_KEY_PREFIX": "maplefile",
        "LEADER_ELECTION_METADATA": "url=http://10.0.0.5:8000, zone=eu-1",
        "LEADER_ELECTION_MIN_REPLICAS": "2",
        "LEADER_ELECTION_RESTART_PROTECTION": "false",
        "LEADER_ELECTION_PRIORITY": "-7",
        "UNRELATED": "x",
    }
    c = ElectionConfig.from_env(env)
    assert c.lock_ttl == timedelta(seconds=30)
    assert c.heartbeat_interval == timedelta(seconds=10)
    assert c.retry_interval == timedelta(seconds=5)
    assert c.renew_deadline == timedelta(seconds=20)
    assert (c.instance_id, c.hostname, c.name) == ("instance-1", "server-01", "billing")
    assert c.lock_key == "maplefile:{billing}:lock"
    assert c.metadata == {"url": "http://10.0.0.5:8000", "zone": "eu-1"}
    assert (c.min_replicas, c.restart_protection, c.priority) == (2, False, -7)
    assert set(ElectionConfig.ENV_NAMES.values()) == set(env) - {"UNRELATED"}


def test_from_env_ignores_empty_values_and_lets_overrides_win() -> None:
    c = ElectionConfig.from_env(
        {"LEADER_ELECTION_LOCK_TTL": "", "LEADER_ELECTION_NAME": "a"}, name="b"
    )
    assert c.lock_ttl == timedelta(seconds=10)
    assert c.name == "b"


def test_from_env_error_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADER_ELECTION_LOCK_TTL", "ten seconds")
    with pytest.raises(ConfigurationError, match="LEADER_ELECTION_LOCK_TTL"):
        ElectionConfig.from_env()


def test_metadata_takes_a_mapping_json_or_pairs_and_is_read_only() -> None:
    as_mapping = ElectionConfig(metadata={"url": "http://a:8000", "zone": "eu-1"})
    as_json = ElectionConfig(metadata='{"url": "http://a:8000", "zone": "eu-1"}')
    as_pairs = ElectionConfig(metadata="url=http://a:8000,zone=eu-1")
    assert as_mapping.metadata == as_json.metadata == as_pairs.metadata
    assert as_mapping.metadata["url"] == "http://a:8000"
    assert ElectionConfig().metadata == {}
    assert ElectionConfig(metadata="url=a=b").metadata == {"url": "a=b"}  # first '=' splits
    with pytest.raises(TypeError, match="read-only"):
        as_mapping.metadata["url"] = "http://b"
    with pytest.raises(TypeError, match="read-only"):
        as_mapping.metadata.update(url="http://b")
    assert as_mapping.metadata == {"url": "http://a:8000", "zone": "eu-1"}
    assert hash(as_mapping) == hash(as_pairs)  # a frozen config stays hashable
    assert as_mapping.model_dump()["metadata"] == {"url": "http://a:8000", "zone": "eu-1"}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("url", "key=value pairs"),
        ("{not json", "not a valid JSON object"),
        ('["a"]', "must be an object"),
        ({"bad key": "x"}, "key 'bad key' is not allowed"),
        ({"": "x"}, "key '' is not allowed"),
        ({"n": 1}, "must be a string"),
        ({"big": "x" * 1025}, "at most 1024"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32"),
        ({f"k{i}": "v" * 1000 for i in range(5)}, "at most 4096"),
        (42, "mapping of strings"),
    ],
)
def test_bad_metadata_names_the_field_and_the_fix(metadata: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match="metadata") as info:
        ElectionConfig(metadata=metadata)
    assert message in str(info.value)


def test_a_config_with_metadata_pickles_and_copies() -> None:
    config = ElectionConfig(name="billing", metadata={"url": "http://a:8000"})
    for copied in (
        pickle.loads(pickle.dumps(config)),
        copy.deepcopy(config),
        copy.copy(config),
        config.model_copy(deep=True),
    ):
        assert copied == config
        assert copied.metadata == {"url": "http://a:8000"}
        with pytest.raises(TypeError, match="read-only"):
            copied.metadata["url"] = "x"


def test_a_stored_record_is_read_without_the_configuration_limits() -> None:
    # A record written by another version, with more entries than this one lets you configure.
    record = {
        "instance_id": "a",
        "hostname": "h",
        "pid": 1,
        "started_at": "2026-12-03T00:00:00+00:00",
        "last_heartbeat": "2026-12-03T00:00:01+00:00",
        "election": "billing",
        "fencing_token": 5,
        "metadata": {f"key {i}": "v" * 2000 for i in range(40)},
    }
    info = LeaderInfo.model_validate(record)
    assert len(info.metadata) == 40
    assert LeaderInfo.model_validate({**record, "metadata": {}}).metadata == {}
    del record["metadata"]
    assert LeaderInfo.model_validate(record).metadata == {}  # records from before metadata


def test_min_replicas_and_restart_protection_defaults_and_bad_values() -> None:
    c = ElectionConfig()
    assert (c.min_replicas, c.restart_protection) == (0, True)
    for bad in (-1, 101, True, "1.5"):
        with pytest.raises(ConfigurationError, match="min_replicas"):
            ElectionConfig(min_replicas=bad)
    with pytest.raises(ConfigurationError, match="LEADER_ELECTION_RESTART_PROTECTION"):
        ElectionConfig.from_env({"LEADER_ELECTION_RESTART_PROTECTION": "maybe"})
    assert (
        ElectionConfig.from_env({"LEADER_ELECTION_RESTART_PROTECTION": "off"}).restart_protection
        is False
    )


def test_priority_default_range_and_bad_values() -> None:
    assert ElectionConfig().priority == 0
    assert (ElectionConfig(priority=-100).priority, ElectionConfig(priority=100).priority) == (
        -100,
        100,
    )
    for bad in (-101, 101, True, "high", 1.5):
        with pytest.raises(ConfigurationError, match="priority"):
            ElectionConfig(priority=bad)


def test_the_waiting_key_is_the_fence_keys_sibling_and_distinct() -> None:
    config = ElectionConfig(name="billing")
    assert config.waiting_key == "leaderelection:{billing}:waiting"
    assert ElectionConfig(lock_key="app:{jobs}:lock").waiting_key == "app:{jobs}:lock:waiting"
    with pytest.raises(ConfigurationError, match="waiting key must differ"):
        ElectionConfig(name="billing", info_key="leaderelection:{billing}:waiting")
