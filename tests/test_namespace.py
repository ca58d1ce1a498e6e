"""Listing, glob, walk, write, delete and move against a real filer."""

import concurrent.futures

import pytest

import seaweed_data as sd


@pytest.fixture(scope="module")
def client(cluster):
    with cluster.client(list_page_size=100) as c:
        yield c


@pytest.fixture(scope="module")
def big_dir(client):
    names = [f"n{i:05d}.bin" for i in range(1200)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: client.write(f"/ns/big/{n}", n.encode()), names))
    return names


def test_1200_entries_list_completely_with_small_pages(client, big_dir):
    before = client.stats()["filer_requests"]
    assert client.listdir("/ns/big") == big_dir
    assert client.stats()["filer_requests"] - before >= 12  # pages of 100


def test_scandir_gives_sizes(client, big_dir):
    entries = client.scandir("/ns/big")
    assert {e.size for e in entries} == {len("n00000.bin")}


def test_glob_is_sorted_and_supports_patterns(client, big_dir):
    for path in ("/ns/g/b/x.tfrecord", "/ns/g/a/y.tfrecord", "/ns/g/a/z.txt",
                 "/ns/g/a/deep/w.tfrecord", "/ns/g/.hidden.tfrecord", "/ns/g/c.tfrecord"):
        client.write(path, b"1")
    assert client.glob("/ns/g/*/*.tfrecord") == ["/ns/g/a/y.tfrecord", "/ns/g/b/x.tfrecord"]
    assert client.glob("/ns/g/**/*.tfrecord") == [
        "/ns/g/a/deep/w.tfrecord", "/ns/g/a/y.tfrecord", "/ns/g/b/x.tfrecord",
        "/ns/g/c.tfrecord"]
    assert client.glob("/ns/g/[ab]/?.t*") == [
        "/ns/g/a/y.tfrecord", "/ns/g/a/z.txt", "/ns/g/b/x.tfrecord"]
    assert client.glob("/ns/g/.*") == ["/ns/g/.hidden.tfrecord"]
    assert client.glob("/ns/g/c.tfrecord") == ["/ns/g/c.tfrecord"]
    assert client.glob("/ns/g/none*") == []
    assert client.glob("/ns/missing/*/x") == []
    assert len(client.glob("/ns/big/n0*.bin")) == 1200


def test_walk_matches_the_tree(client):
    for path in ("/ns/w/a.bin", "/ns/w/s/b.bin", "/ns/w/s/t/c.bin", "/ns/w/u/d.bin"):
        client.write(path, b"x")
    walked = list(client.walk("/ns/w"))
    assert walked == [
        ("/ns/w", ["s", "u"], ["a.bin"]),
        ("/ns/w/s", ["t"], ["b.bin"]),
        ("/ns/w/s/t", [], ["c.bin"]),
        ("/ns/w/u", [], ["d.bin"]),
    ]
    with pytest.raises(sd.NotFoundError):
        list(client.walk("/ns/nowhere"))


def test_delete_move_exists(client):
    client.write("/ns/d/one.bin", b"1")
    assert client.exists("/ns/d/one.bin")
    client.move("/ns/d/one.bin", "/ns/d/two.bin")
    assert not client.exists("/ns/d/one.bin") and client.read("/ns/d/two.bin") == b"1"
    client.delete("/ns/d/two.bin")
    assert not client.exists("/ns/d/two.bin")
    with pytest.raises(sd.NotFoundError, match=r"two\.bin"):
        client.delete("/ns/d/two.bin")
    client.write("/ns/d/sub/x.bin", b"x")
    client.delete("/ns/d", recursive=True)
    assert not client.exists("/ns/d")


def test_rewrite_is_never_served_stale(client):
    client.write("/ns/v.bin", b"old" * 1000)
    assert client.read("/ns/v.bin") == b"old" * 1000
    client.write("/ns/v.bin", b"new!" * 10)
    assert client.read("/ns/v.bin") == b"new!" * 10


def test_directory_errors(client, big_dir):
    with pytest.raises(sd.NotDirectoryError, match=r"n00001\.bin"):
        client.listdir("/ns/big/n00001.bin")
    with pytest.raises(sd.NotFoundError):
        client.listdir("/ns/absent")
    assert client.stat("/ns/big").is_dir


def test_locations_of_the_same_and_other_filers(client, cluster):
    client.write("/ns/loc.bin", b"here")
    host = cluster.filer_url.split("://")[1]
    assert client.read(f"seaweedfs://{host}/ns/loc.bin") == b"here"
    assert client.read(f"{cluster.filer_url}/ns/loc.bin") == b"here"
    with pytest.raises(sd.InvalidLocationError, match="other-host"):
        client.read("seaweedfs://other-host:1/ns/loc.bin")
