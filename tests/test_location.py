import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seaweed_data as sd
from seaweed_data.core.location import (
    is_normal_path,
    normalize_filer,
    normalize_path,
    parent_and_name,
    parse_location,
)


def test_seaweedfs_scheme_maps_to_http_filer():
    loc = parse_location("seaweedfs://host:8888/a/b.jpg")
    assert (loc.filer, loc.path) == ("http://host:8888", "/a/b.jpg")


def test_http_and_https_filer_urls():
    assert parse_location("http://h:1/x").filer == "http://h:1"
    assert parse_location("https://h:443/x/y/").path == "/x/y"


def test_bare_path_uses_seaweed_filer_env(monkeypatch):
    monkeypatch.setenv("SEAWEED_FILER", "10.0.0.1:8888")
    assert parse_location("/a//b/./c").url == "http://10.0.0.1:8888/a/b/c"
    monkeypatch.delenv("SEAWEED_FILER")
    assert parse_location("/a").filer == "http://127.0.0.1:8888"


def test_paths_are_quoted_in_urls():
    assert parse_location("/a b/ü#?.bin", "http://f:1").url == "http://f:1/a%20b/%C3%BC%23%3F.bin"


@pytest.mark.parametrize("bad", [
    "", "relative/path", "ftp://host/x", "seaweedfs:///nohost", "/a/../../etc",
    "http://h:1/x?y=1", "/nul\x00byte", "http://h:notaport/x"])
def test_bad_locations_raise(bad):
    with pytest.raises(sd.InvalidLocationError):
        parse_location(bad)
        normalize_filer(parse_location(bad).filer)


def test_dotdot_inside_the_tree_is_resolved():
    assert parse_location("/a/b/../c").path == "/a/c"


def test_normalize_filer_forms():
    assert normalize_filer("h:1") == "http://h:1"
    assert normalize_filer("seaweedfs://h:1/") == "http://h:1"
    with pytest.raises(sd.InvalidLocationError):
        normalize_filer("http://h:1/sub")


def test_parent_and_name():
    assert parent_and_name("/a/b") == ("/a", "b")
    assert parent_and_name("/b") == ("/", "b")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["a", "b.jpg", ".", "..", "", ".x", "\x00", "é"]),
                max_size=6), st.booleans())
def test_a_path_called_normal_is_kept_as_normalize_path_would(parts, absolute):
    path = ("/" if absolute else "") + "/".join(parts)
    if is_normal_path(path):
        assert normalize_path(path) == path


@pytest.mark.parametrize("path", ["/", "/a", "/a/b.jpg", "/buckets/x/class_0/img_1.JPEG"])
def test_common_paths_are_normal(path):
    assert is_normal_path(path)
