"""The path layer (rldskit.paths, issue 14's first step) against real servers: a moto S3 server and
the GCS emulator on loopback (tests/object_stores.py), through the real s3fs/gcsfs clients and the
stores' standard settings; and local paths, which must behave the same."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from fuzzing import examples
from object_stores import gcs_bucket, gcs_server, s3_bucket, s3_server  # noqa: F401 - fixtures
from rldskit import paths
from rldskit.paths import PathError

pytest.importorskip("s3fs")
pytest.importorskip("gcsfs")


@pytest.fixture(params=["local", "s3", "gs"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket" if request.param == "s3" else "gcs_bucket") + "/root"


def test_write_read_list_and_remove_the_same_way_everywhere(root):
    files = {"a.json": b"{}", "sub/b.bin": bytes(range(256)) * 4, "sub/deeper/c.txt": b"c"}
    for rel, data in files.items():
        paths.write_bytes(paths.join(root, rel), data)
    assert paths.list_files(root) == sorted((rel, len(data)) for rel, data in files.items())
    for rel, data in files.items():
        assert paths.read_bytes(paths.join(root, rel)) == data
    assert paths.exists(paths.join(root, "a.json")) and paths.is_dir(paths.join(root, "sub"))
    assert not paths.exists(paths.join(root, "nope.json"))
    paths.write_bytes(paths.join(root, "a.json"), b'{"v": 2}')  # replaced whole
    assert paths.read_bytes(paths.join(root, "a.json")) == b'{"v": 2}'
    paths.remove(paths.join(root, "sub"), recursive=True)
    assert paths.list_files(root) == [("a.json", 8)]
    paths.remove(paths.join(root, "gone.json"))  # missing is not an error


def test_a_listing_is_one_paginated_request_per_prefix_not_one_per_object(s3_bucket):
    """2 500 objects (more than S3's 1 000-key page) listed completely, sizes from the listing."""
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3")
    for i in range(2500):
        client.put_object(Bucket=bucket, Key=f"many/{i:05d}.json", Body=b"x" * (i % 7))
    got = paths.list_files(f"{s3_bucket}/many")
    assert len(got) == 2500 and got[0] == ("00000.json", 0) and got[-1] == ("02499.json", 2499 % 7)


@pytest.mark.parametrize("store", ["s3", "gs"])
def test_missing_objects_buckets_and_prefixes_name_the_url(store, request):
    bucket = request.getfixturevalue("s3_bucket" if store == "s3" else "gcs_bucket")
    with pytest.raises(PathError, match=rf"{bucket}/nope\.json: cannot read: does not exist"):
        paths.read_bytes(f"{bucket}/nope.json")
    with pytest.raises(PathError, match=r"no objects under this prefix"):
        paths.list_files(f"{bucket}/empty")
    with pytest.raises(PathError, match=rf"{store}://no-such-bucket-x1/eps: cannot list: does not exist \(.*bucket"):
        paths.list_files(f"{store}://no-such-bucket-x1/eps")


def test_access_refused_is_a_path_error_without_the_secret(s3_bucket):
    import json

    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    paths.write_bytes(f"{s3_bucket}/secret.json", b"{}")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                                                      "Resource": f"arn:aws:s3:::{bucket}/*"}]}
    boto3.client("s3").put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    with pytest.raises(PathError) as e:
        paths.read_bytes(f"{s3_bucket}/secret.json")
    assert "access refused" in str(e.value) and f"{s3_bucket}/secret.json" in str(e.value)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(e.value)


def test_an_unreachable_endpoint_is_a_path_error_naming_the_url(monkeypatch):
    from object_stores import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    paths.reset()
    try:
        with pytest.raises(PathError, match=r"s3://b-unreachable/x\.json: cannot read") as e:
            paths.read_bytes("s3://b-unreachable/x.json")
        assert "very-secret" not in str(e.value)
    finally:
        paths.reset()


@pytest.mark.parametrize("url, message", [
    ("ftp://host/x", "unknown URL scheme 'ftp'"),
    ("hdfs://nn/x", "unknown URL scheme 'hdfs'"),
    ("s3:///key-without-bucket", "expected s3://BUCKET/KEY"),
    ("s3://user:pw@bucket/key", "expected s3://BUCKET/KEY"),
    ("file://otherhost/x", "not host 'otherhost'"),
])
def test_bad_urls_are_refused_before_any_request(url, message):
    with pytest.raises(PathError, match=message) as e:
        paths.location(url)
    assert "pw" not in str(e.value)


def test_urls_parse_to_one_canonical_form():
    assert str(paths.location("s3://bkt//a///b/")) == "s3://bkt/a/b"
    assert paths.location("GS://bkt/k").scheme == "gs"
    assert paths.location("file:///tmp/x") == paths.location("/tmp/x")
    assert paths.join("gs://bkt", "a", "b.json") == "gs://bkt/a/b.json"
    assert paths.join("/tmp/d", "a", "b.json") == os.path.join("/tmp/d", "a", "b.json")
    assert paths.redact("s3://AKIA:secret@bkt/k?X-Amz-Signature=abc#f") == "s3://bkt/k"
    assert not paths.is_remote("relative/path") and paths.is_remote("s3://b/k")


@settings(max_examples=examples(200), deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_is_refused_with_a_path_error(text):
    try:
        loc = paths.location(text)
    except PathError:
        return
    if not loc.remote and not text.lower().startswith("file://"):
        assert str(loc) == text  # a local path is kept as given
    elif loc.remote:
        assert paths.location(str(loc)) == loc  # the canonical form parses to itself
