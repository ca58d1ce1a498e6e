"""SeaweedFS JWT and HTTPS against real servers: a cluster whose volume servers and filer check
read and write tokens, and one whose filer serves HTTPS with a certificate of a private CA.

Every round trip is byte-exact; a client without keys, or with wrong ones, gets a
``PermissionDeniedError`` naming the path and the key; no key ever shows in logs, reprs, stats
or error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

import seaweed_data as sd
from seaweed_data.core import security
from seaweed_data.core.cluster import LocalCluster
from seaweed_data.core.cluster_security import ClusterSecurity, resolve_security
from seaweed_data.core.security import (
    DEFAULT_LIFETIME,
    MIN_LIFETIME,
    SecurityKeys,
    SigningKey,
    Tokens,
    claims_of,
    load_keys,
)
from seaweed_data.core.upload import UploadOptions, write_file
from seaweed_data.errors import TLSError

KiB = 1024
MiB = 1024 * KiB
KEY_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalCluster]:
    """Volume servers and filer check read and write JWTs; 1 MB filer chunks."""
    with LocalCluster(security=True, filer_args=("-maxMB=1",), stop_grace=1.0) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def https_cluster() -> Iterator[LocalCluster]:
    """JWT everywhere, and a filer serving HTTPS with a certificate of a private CA."""
    with LocalCluster(security=ClusterSecurity(https=True), stop_grace=1.0) as cluster:
        yield cluster


@pytest.fixture
def no_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No security.toml on weed's search path nor WEED_JWT_* variables; returns a fresh cwd."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    for name in list(os.environ):
        if name.startswith("WEED_JWT"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(security, "SEARCH_PATH", (".", "~/.seaweedfs"))
    return cwd


def keys_of(cluster: LocalCluster) -> dict[str, str]:
    """Section -> key of the cluster's generated security.toml."""
    assert cluster.security_toml is not None
    table = tomllib.loads(cluster.security_toml.read_text())
    keys = {}
    for section in KEY_SECTIONS:
        node = table
        for part in section.split("."):
            node = node[part]
        keys[section] = node["key"]
    return keys


def toml_with(keys: dict[str, str]) -> str:
    return "".join(f'[{section}]\nkey = "{key}"\n\n' for section, key in keys.items())


def plain_config(cluster: LocalCluster, **options: object) -> sd.Config:
    """The cluster's addresses, but none of its security files."""
    return sd.Config(master=cluster.master_url, filer_grpc_port=cluster.filer_grpc_port,
                     **options)  # type: ignore[arg-type]


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------- round trips


def exercise(client: sd.Client, root: str) -> None:
    """Every data path, byte-exact: filer PUT, direct chunk upload, open("wb"), whole, ranged
    and batched reads, listing, glob, delete."""
    small, multi = payload(3000, 1), payload(3 * MiB + 123, 2)
    client.write(f"{root}/small.bin", small)
    client.write(f"{root}/multi.bin", multi)
    assert len(client.stat(f"{root}/multi.bin").chunks) == 4  # -maxMB=1
    assert client.read(f"{root}/small.bin") == small
    assert client.read(f"{root}/multi.bin") == multi
    assert client.read(f"{root}/multi.bin", MiB - 10, MiB + 20) == multi[MiB - 10:2 * MiB + 10]
    direct = payload(2 * MiB + 5, 3)
    entry = write_file(client, f"{root}/direct.bin", direct, UploadOptions(chunk_bytes=512 * KiB))
    assert len(entry.chunks) == 5 and client.stats().get("upload_fallbacks", 0) == 0
    with client.open(f"{root}/opened.bin", "wb") as file:
        file.write(small + multi[:1000])
    with client.open(f"{root}/opened.bin", "rb") as file:
        file.seek(2500)
        assert file.read(700) == (small + multi[:1000])[2500:3200]
    names = ["direct.bin", "multi.bin", "opened.bin", "small.bin"]
    assert client.read_many([f"{root}/{n}" for n in names]) == [
        direct, multi, small + multi[:1000], small]
    assert sorted(client.listdir(root)) == names
    assert client.glob(f"{root}/*i*.bin") == [f"{root}/direct.bin", f"{root}/multi.bin"]
    client.delete(f"{root}/small.bin")
    assert not client.exists(f"{root}/small.bin")
    client.delete(root, recursive=True)
    assert not client.exists(root)


def test_every_path_works_with_the_keys_and_leaks_none(
        secured: LocalCluster, unique_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    keys = keys_of(secured)
    caplog.set_level(logging.DEBUG)
    with secured.client(memory_cache_bytes=0) as client:
        exercise(client, unique_dir)
        tokens = client._async().http.tokens
        assert tokens.minted > 0
        shown = [caplog.text, repr(client), repr(client.config), repr(tokens),
                 repr(tokens.keys), repr(list(tokens.keys.keys.values())), str(client.stats()),
                 json.dumps(client.stats())]
    messages = [record.getMessage() for record in caplog.records]
    assert any("JWT keys" in m for m in messages)  # the logs did capture the session
    for key in keys.values():
        for text in [*shown, *messages]:
            assert key not in text
    assert "Bearer" not in caplog.text


def test_security_toml_is_private_and_reaches_every_component(secured: LocalCluster) -> None:
    toml = secured.security_toml
    assert toml is not None and stat.S_IMODE(toml.stat().st_mode) == 0o600
    keys = keys_of(secured)
    assert len(set(keys.values())) == 4 and all(len(k) >= 32 for k in keys.values())
    for name in secured.pids:
        assert (secured.base_dir / name / "security.toml").read_bytes() == toml.read_bytes()
    argv = " ".join(" ".join(proc.argv) for proc in secured._procs.values())
    for key in keys.values():
        assert key not in argv and key not in repr(secured)
    assert secured.ca_file is None and secured.filer_url.startswith("http://")


# --------------------------------------------------------------------------- refusals


def test_without_keys_every_request_is_refused_clearly(
        secured: LocalCluster, no_search_path: Path) -> None:
    with secured.client() as client:
        client.write("/sec/kept.bin", b"kept")
    with sd.Client(secured.filer_url, plain_config(secured)) as client:
        with pytest.raises(sd.PermissionDeniedError) as read:
            client.read("/sec/kept.bin")
        with pytest.raises(sd.PermissionDeniedError) as write:
            client.write("/sec/new.bin", b"new")
        with pytest.raises(sd.PermissionDeniedError) as delete:
            client.delete("/sec/kept.bin")
        with pytest.raises(sd.PermissionDeniedError):
            client.listdir("/sec")
    assert "'/sec/kept.bin'" in str(read.value) and "filer read key" in str(read.value)
    assert "[jwt.filer_signing.read]" in str(read.value)
    assert "Config.security_toml" in str(read.value)
    assert "'/sec/new.bin'" in str(write.value) and "filer write key" in str(write.value)
    assert "WEED_JWT_FILER_SIGNING_KEY" in str(write.value)
    assert "'/sec/kept.bin'" in str(delete.value)
    assert isinstance(read.value, PermissionError)


def test_wrong_keys_are_refused_and_not_shown(secured: LocalCluster, tmp_path: Path) -> None:
    wrong = {section: f"wrong-{i}-{os.urandom(8).hex()}" for i, section in enumerate(KEY_SECTIONS)}
    toml = tmp_path / "security.toml"
    toml.write_text(toml_with(wrong))
    with sd.Client(secured.filer_url, plain_config(secured, security_toml=toml)) as client:
        with pytest.raises(sd.PermissionDeniedError) as read:
            client.read("/sec/anything.bin")
        with pytest.raises(sd.PermissionDeniedError) as write:
            client.write("/sec/anything.bin", b"x")
    for error in (read.value, write.value):
        assert "'/sec/anything.bin'" in str(error) and str(toml) in str(error)
        assert "rejected" in str(error)
        assert not any(key in str(error) or key in repr(error) for key in wrong.values())


def test_wrong_volume_read_key_is_refused_naming_the_path(
        secured: LocalCluster, tmp_path: Path) -> None:
    keys = keys_of(secured)
    data = payload(5000, 4)
    with secured.client() as client:
        client.write("/sec/volume.bin", data)
    toml = tmp_path / "security.toml"
    toml.write_text(toml_with({**keys, "jwt.signing.read": "not-the-read-key"}))
    config = plain_config(secured, security_toml=toml)
    with sd.Client(secured.filer_url, config) as client, \
            pytest.raises(sd.PermissionDeniedError) as info:
        client.read("/sec/volume.bin")
    message = str(info.value)
    assert "volume server refused to read '/sec/volume.bin'" in message
    assert "[jwt.signing.read]" in message and "not-the-read-key" not in message


def test_without_volume_keys_the_master_hands_out_tokens(
        secured: LocalCluster, tmp_path: Path) -> None:
    keys = keys_of(secured)
    data = payload(2 * MiB + 1, 5)
    toml = tmp_path / "security.toml"
    toml.write_text(toml_with({s: keys[s] for s in KEY_SECTIONS if "filer" in s}))
    config = plain_config(secured, security_toml=toml, memory_cache_bytes=0)
    with sd.Client(secured.filer_url, config) as client:
        entry = write_file(client, "/sec/master_tokens.bin", data,
                           UploadOptions(chunk_bytes=MiB))  # write tokens from /dir/assign
        assert len(entry.chunks) == 3
        assert client.read("/sec/master_tokens.bin") == data  # read tokens: /dir/lookup
        assert client.read("/sec/master_tokens.bin", MiB - 1, 3) == data[MiB - 1:MiB + 2]
        assert client._async().http.tokens.minted == 1  # only the filer's, reused
        assert client.stats()["bytes_fetched"] >= len(data)


# --------------------------------------------------------------------------- finding the keys


@pytest.mark.parametrize("where", ["home", "cwd", "environment"])
def test_keys_are_found_like_weed_finds_them(secured: LocalCluster, no_search_path: Path,
                                             where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert secured.security_toml is not None
    text = secured.security_toml.read_text()
    if where == "home":
        (Path(os.environ["HOME"]) / ".seaweedfs").mkdir()
        (Path(os.environ["HOME"]) / ".seaweedfs" / "security.toml").write_text(text)
    elif where == "cwd":
        (no_search_path / "security.toml").write_text(text)
    else:
        for section, key in keys_of(secured).items():
            monkeypatch.setenv(security.env_name(section, "key"), key)
    data = payload(1500, 6)
    with sd.Client(secured.filer_url, plain_config(secured)) as client:
        client.write(f"/sec/found-{where}.bin", data)
        assert client.read(f"/sec/found-{where}.bin") == data
        client.delete(f"/sec/found-{where}.bin")


def test_bad_security_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(sd.ConfigError, match="no such file"):
        load_keys(str(tmp_path / "missing.toml"))
    config = sd.Config(security_toml=str(tmp_path / "missing.toml"), retries=0)
    with sd.Client("http://127.0.0.1:9", config) as client, \
            pytest.raises(sd.ConfigError, match=r"security_toml: no such file.*missing\.toml"):
        client.read("/x")  # the first request loads the keys
    broken = tmp_path / "broken.toml"
    broken.write_text('[jwt.signing]\nkey = "s3cr3t-value\n')
    with pytest.raises(sd.ConfigError) as info:
        load_keys(str(broken))
    assert str(broken) in str(info.value) and "s3cr3t" not in str(info.value)
    broken.write_text("[jwt.signing]\nkey = 12345\n")
    with pytest.raises(sd.ConfigError, match="must be a string"):
        load_keys(str(broken))
    broken.write_text('[jwt.signing]\nkey = "k"\nexpires_after_seconds = "soon"\n')
    with pytest.raises(sd.ConfigError, match="expires_after_seconds"):
        load_keys(str(broken))


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "security.toml"
    toml.write_text('[jwt.signing]\nkey = "from-file"\nexpires_after_seconds = 30\n'
                    '[jwt.filer_signing]\nkey = ""\n')
    keys = load_keys(str(toml), {"WEED_JWT_SIGNING_READ_KEY": "from-env",
                                 "WEED_JWT_SIGNING_READ_EXPIRES_AFTER_SECONDS": "3"})
    assert sorted(keys.keys) == ["volume_read", "volume_write"]
    assert keys.keys["volume_write"] == SigningKey(b"from-file", 30, str(toml))
    assert keys.keys["volume_read"] == SigningKey(b"from-env", MIN_LIFETIME,
                                                  "WEED_JWT_SIGNING_READ_KEY")
    assert "from-" not in repr(keys) + repr(list(keys.keys.values()))


# --------------------------------------------------------------------------- tokens


def test_tokens_are_hs256_cached_per_needle_and_renewed_at_half_life() -> None:
    now = [1_000_000.0]
    key = SigningKey(b"a-secret", 20, "test")
    tokens = Tokens(SecurityKeys({"volume_read": key, "filer_write": key}), lambda: now[0])
    first = tokens.header("volume_read", "3,01ab")
    assert first is not None and first.startswith("Bearer ")
    header, body, signature = first[7:].split(".")
    expected = hmac.new(b"a-secret", f"{header}.{body}".encode(), hashlib.sha256).digest()
    assert security._b64(expected).decode() == signature
    assert claims_of(first) == {"fid": "3,01ab", "exp": 1_000_020}
    assert tokens.header("volume_read", "3,01ab") == first
    assert tokens.header("volume_read", "3,01ac") != first
    assert tokens.header("volume_write", "3,01ab") is None
    assert claims_of(tokens.header("filer_write") or "") == {"exp": 1_000_020}
    now[0] += 9.5
    assert tokens.header("volume_read", "3,01ab") == first
    now[0] += 1
    renewed = tokens.header("volume_read", "3,01ab")
    assert renewed != first and claims_of(renewed or "")["exp"] == 1_000_030
    assert tokens.minted == 4
    assert tokens.filer_header("DELETE") == {"Authorization": tokens.header("filer_write")}
    assert tokens.filer_header("GET") == {}


def test_token_lifetimes(tmp_path: Path) -> None:
    toml = tmp_path / "security.toml"
    toml.write_text('[jwt.signing]\nkey = "a"\n[jwt.signing.read]\nkey = "b"\n'
                    'expires_after_seconds = 1\n[jwt.filer_signing]\nkey = "c"\n'
                    "expires_after_seconds = 300\n")
    keys = load_keys(str(toml), {}).keys
    lifetimes = {kind: key.lifetime for kind, key in keys.items()}
    assert lifetimes == {"volume_write": DEFAULT_LIFETIME, "volume_read": MIN_LIFETIME,
                         "filer_write": 300}


def test_config_takes_paths_and_shows_no_keys(tmp_path: Path) -> None:
    config = sd.Config(security_toml=tmp_path / "s.toml", ca_file=tmp_path / "ca.pem")  # type: ignore[arg-type]
    assert config.security_toml == str(tmp_path / "s.toml")
    assert config.ca_file == str(tmp_path / "ca.pem")
    with pytest.raises(sd.ConfigError, match="security_toml must be a path"):
        sd.Config(security_toml=42)  # type: ignore[arg-type]


def test_cluster_security_options() -> None:
    assert resolve_security(True, s3=False) == ClusterSecurity()
    assert resolve_security(False, s3=True) is None
    assert resolve_security("x.toml", s3=False) == Path("x.toml")
    assert ClusterSecurity(read_jwt=False).kinds() == ["volume_write", "filer_write"]
    assert ClusterSecurity(volume_jwt=False).kinds() == ["filer_write", "filer_read"]
    with pytest.raises(sd.ConfigError, match="S3 gateway"):
        LocalCluster(security=ClusterSecurity(https=True), s3=True)
    with pytest.raises(sd.ConfigError, match="security must be"):
        LocalCluster(security=3)  # type: ignore[arg-type]
    with pytest.raises(sd.ConfigError, match="expires_after_seconds"):
        ClusterSecurity(expires_after_seconds=0)


# --------------------------------------------------------------------------- HTTPS


def test_https_filer_with_private_ca(https_cluster: LocalCluster) -> None:
    assert https_cluster.filer_url.startswith("https://") and https_cluster.ca_file is not None
    data, big = payload(4000, 7), payload(MiB + 3, 8)
    with https_cluster.client() as client:
        assert client.config.ca_file == str(https_cluster.ca_file)
        client.write("/tls/a.bin", data)
        write_file(client, "/tls/b.bin", big, UploadOptions(chunk_bytes=256 * KiB))
        assert client.stats().get("upload_fallbacks", 0) == 0  # gRPC CreateEntry over h2c
        assert client.read("/tls/a.bin") == data
        assert client.read("/tls/b.bin", 1000, 300_000) == big[1000:301_000]
        assert sorted(client.listdir("/tls")) == ["a.bin", "b.bin"]


def test_https_filer_master_discovery_over_h2c(https_cluster: LocalCluster) -> None:
    data = payload(70_000, 9)
    config = sd.Config(filer_grpc_port=https_cluster.filer_grpc_port,
                       security_toml=str(https_cluster.security_toml),
                       ca_file=str(https_cluster.ca_file), memory_cache_bytes=0)
    with sd.Client(https_cluster.filer_url, config) as client:
        client.write("/tls/discovered.bin", data)
        assert client.read("/tls/discovered.bin") == data
        assert client.stats()["volume_requests"] >= 1  # found the master, read the volume


def test_https_filer_without_its_ca_is_a_clear_tls_error(https_cluster: LocalCluster) -> None:
    config = plain_config(https_cluster, security_toml=str(https_cluster.security_toml))
    with sd.Client(https_cluster.filer_url, config) as client:
        with pytest.raises(TLSError) as info:
            client.read("/tls/a.bin")
        assert client.stats()["retries"] == 0  # a certificate does not get better
    assert isinstance(info.value, sd.TransportError)
    assert "certificate is not trusted" in str(info.value)
    assert "Config.ca_file" in str(info.value)


def test_https_filer_without_verification(https_cluster: LocalCluster) -> None:
    data = payload(1234, 10)
    config = plain_config(https_cluster, security_toml=str(https_cluster.security_toml),
                          verify_tls=False)
    with sd.Client(https_cluster.filer_url, config) as client:
        client.write("/tls/unverified.bin", data)
        assert client.read("/tls/unverified.bin") == data
