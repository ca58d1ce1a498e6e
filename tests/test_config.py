import pytest

import seaweed_data as sd
from seaweed_data.config import parse_size


def test_defaults_are_valid_and_frozen():
    config = sd.Config()
    assert config.eviction == "future"
    with pytest.raises(AttributeError):
        config.retries = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "retries"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"eviction": "fifo"}, "eviction"),
        ({"master": "not a url"}, "master"),
        ({"memory_cache_bytes": "1GB"}, "memory_cache_bytes"),
        ({"concurrency": True}, "concurrency"),
    ],
)
def test_bad_values_raise_config_error_naming_the_option(kwargs, message):
    with pytest.raises(sd.ConfigError, match=message):
        sd.Config(**kwargs)
    with pytest.raises(ValueError):
        sd.Config(**kwargs)


def test_from_env_reads_prefixed_variables_and_overrides_win():
    env = {
        "SEAWEED_DATA_RETRIES": "2",
        "SEAWEED_DATA_MEMORY_CACHE_BYTES": "64MiB",
        "SEAWEED_DATA_VOLUME_TIMEOUT": "0.5",
        "SEAWEED_DATA_VERIFY_TLS": "no",
        "SEAWEED_DATA_EVICTION": "lru",
        "SEAWEED_MASTER": "127.0.0.1:9333",
        "SEAWEED_DATA_FILER_GRPC_PORT": "18889",
    }
    config = sd.Config.from_env(env, retries=7)
    assert config.retries == 7
    assert config.memory_cache_bytes == 64 * 1024 * 1024
    assert config.volume_timeout == 0.5
    assert config.verify_tls is False
    assert config.eviction == "lru"
    assert config.master == "http://127.0.0.1:9333"
    assert config.filer_grpc_port == 18889


@pytest.mark.parametrize("name", ["SEAWEED_DATA_RETRIES", "SEAWEED_DATA_VERIFY_TLS",
                                  "SEAWEED_DATA_PREFETCH_BYTES"])
def test_from_env_rejects_garbage_naming_the_variable(name):
    with pytest.raises(sd.ConfigError, match=name):
        sd.Config.from_env({name: "lots"})


def test_replace_validates_again():
    assert sd.Config().replace(retries=1).retries == 1
    with pytest.raises(sd.ConfigError):
        sd.Config().replace(retries=-5)


@pytest.mark.parametrize(("text", "value"), [
    ("1024", 1024), ("64k", 65536), ("1.5MiB", 1572864), ("2GB", 2_000_000_000), (7, 7)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects_unknown_units():
    with pytest.raises(sd.ConfigError, match="not a size"):
        parse_size("12 parsecs")
