import base64

import pytest

import seaweed_data as sd
from seaweed_data.core.entry import parse_entry


def test_parses_chunks_missing_offset_and_fid_struct():
    entry = parse_entry({
        "FullPath": "/a/b.bin", "Mode": 432, "FileSize": 20,
        "Mtime": "2026-11-28T18:28:26.116284189Z",
        "chunks": [
            {"file_id": "4,020ce6c32f", "size": 10, "modified_ts_ns": 5},
            {"fid": {"volume_id": 3, "file_key": 7, "cookie": 255}, "offset": 10, "size": 10,
             "cipher_key": base64.b64encode(b"k" * 32).decode(), "is_compressed": True},
        ],
    })
    assert entry.name == "b.bin" and not entry.is_dir and entry.size == 20
    assert entry.chunks[0].offset == 0 and entry.chunks[0].volume_id == "4"
    assert entry.chunks[1].file_id == "3,7000000ff"
    assert entry.chunks[1].cipher_key == b"k" * 32 and entry.chunks[1].is_compressed
    assert entry.mtime == pytest.approx(1795890506.116284, abs=1e-3)


def test_directory_inline_and_remote_entries():
    assert parse_entry({"FullPath": "/d", "Mode": 2147484153}).is_dir
    inline = parse_entry({"FullPath": "/i", "Content": base64.b64encode(b"hey").decode()})
    assert inline.content == b"hey" and inline.size == 3
    remote = parse_entry({"FullPath": "/r", "Remote": {"remote_size": 99}})
    assert remote.remote and remote.size == 99


def test_version_changes_when_chunks_change():
    a = parse_entry({"FullPath": "/x", "FileSize": 1, "chunks": [{"file_id": "1,a", "size": 1}]})
    b = parse_entry({"FullPath": "/x", "FileSize": 1, "chunks": [{"file_id": "1,b", "size": 1}]})
    assert a.version != b.version and a.version == parse_entry(
        {"FullPath": "/x", "FileSize": 1, "chunks": [{"file_id": "1,a", "size": 1}]}).version


def test_malformed_entry_is_a_server_error_naming_the_path():
    with pytest.raises(sd.ServerError, match="/bad"):
        parse_entry({"chunks": [{"size": "huge"}]}, "/bad")
