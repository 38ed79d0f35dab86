"""Loaders on data in a bucket (issue 14 item 7): ``rldskit.loaders.windows("s3://...")`` reads a
verified local copy (rldskit.dataset_cache) that fills once, checks every manifest output's sha256,
is reused, is refilled when the bucket changes, and is safe for two processes filling it at once.
Real moto S3 server on loopback (tests/object_stores.py), real s3fs, real Grain and ArrayRecord."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from object_stores import gcs_bucket, gcs_server, s3_bucket, s3_server  # noqa: F401 - fixtures
from rldskit import dataset_cache, paths
from rldskit.paths import PathError

pytest.importorskip("s3fs")
pytest.importorskip("grain")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, small_donkey_spec) -> Path:
    from rldskit.pipeline import convert
    from rldskit.synth import write_synthetic

    root = tmp_path_factory.mktemp("cached")
    write_synthetic(small_donkey_spec, root / "cap", 4, 9, seed=3)
    return convert([root / "cap"], root / "data", name="cached", runner="inline", shard_size_mb=0.01).path


def _upload(local: Path, url: str) -> list[str]:
    rels = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for rel in rels:
        paths.write_bytes(paths.join(url, rel), (local / rel).read_bytes())
    return rels


def _batches(path, **kw):
    from rldskit.loaders import windows

    return [{k: v.copy() for k, v in b.items()} for b in windows(path, history=2, action_horizon=3, batch_size=4,
                                                                   seed=1, num_epochs=1, **kw)]


@pytest.mark.parametrize("store", ["s3", "gs"])
def test_windows_from_a_bucket_equal_windows_from_disk_and_the_copy_is_reused(converted, store, request, tmp_path,
                                                                              monkeypatch):
    pytest.importorskip("gcsfs")
    bucket = request.getfixturevalue("s3_bucket" if store == "s3" else "gcs_bucket")
    monkeypatch.setenv(dataset_cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    url = f"{bucket}/data/cached/1.0.0"
    rels = _upload(converted, url)
    remote, local = _batches(url), _batches(converted)
    assert len(remote) == len(local) > 0
    for a, b in zip(remote, local):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    copy = dataset_cache.local_copy(url)
    assert copy == tmp_path / "cache" / store / bucket.removeprefix(f"{store}://") / "data/cached/1.0.0"
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == sorted(
        [*rels, dataset_cache.RECORD_FILE])
    reads = []
    real = paths.read_bytes
    monkeypatch.setattr(paths, "read_bytes", lambda u: reads.append(u) or real(u))  # counts; still reads
    assert dataset_cache.local_copy(url) == copy and reads == []  # reused: one listing, no download
    # the bucket changes (a file replaced with other content): the next call fills a new copy
    paths.write_bytes(paths.join(url, "stats.json"), b'{"_dataset": {}}')
    dataset_cache.local_copy(url)
    every = sorted({*rels, "stats.json"})
    assert sorted(set(reads)) == [paths.join(url, r) for r in every]  # every file downloaded once,
    assert len(reads) == len(every) + 1  # and manifest.json read once more, for the sha256s to verify
    assert (copy / "stats.json").read_bytes() == b'{"_dataset": {}}'


def test_a_corrupt_object_is_refused_by_its_manifest_sha256_and_no_copy_is_left(converted, s3_bucket, tmp_path):
    url = f"{s3_bucket}/corrupt/1.0.0"
    _upload(converted, url)
    manifest = json.loads((converted / "manifest.json").read_bytes())
    victim = manifest["outputs"][0]["file"]
    good = (converted / victim).read_bytes()
    paths.write_bytes(paths.join(url, victim), bytes([good[0] ^ 0xFF]) + good[1:])  # same size, other bytes
    with pytest.raises(PathError, match=rf"{victim}: sha256 differs from manifest.json's"):
        dataset_cache.local_copy(url, cache_dir=tmp_path / "cache")
    left = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_dir()]
    assert "1.0.0" not in left and not any(".filling-" in n for n in left)


def test_a_missing_output_and_an_empty_prefix_are_refused_naming_the_url(converted, s3_bucket, tmp_path):
    url = f"{s3_bucket}/partial/1.0.0"
    _upload(converted, url)
    victim = json.loads((converted / "manifest.json").read_bytes())["outputs"][-1]["file"]
    paths.remove(paths.join(url, victim))
    with pytest.raises(PathError, match=r"manifest.json lists are not in the bucket .*the dataset is incomplete"):
        dataset_cache.local_copy(url, cache_dir=tmp_path / "cache")
    with pytest.raises(PathError, match=rf"{s3_bucket}/nothing/here: cannot list"):
        dataset_cache.local_copy(f"{s3_bucket}/nothing/here", cache_dir=tmp_path / "cache")


_FILL = """
import sys
from rldskit import dataset_cache, paths
reads = []
real = paths.read_bytes
paths.read_bytes = lambda u: reads.append(u) or real(u)
copy = dataset_cache.local_copy(sys.argv[1], cache_dir=sys.argv[2])
print(copy, len(reads))
"""


def test_two_processes_filling_the_same_copy_download_it_once(converted, s3_bucket, tmp_path):
    url = f"{s3_bucket}/twice/1.0.0"
    rels = _upload(converted, url)
    procs = [subprocess.Popen([sys.executable, "-c", _FILL, url, str(tmp_path / "cache")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    got = [o[0].split() for o in outs]
    assert got[0][0] == got[1][0]
    assert sorted(int(g[1]) for g in got) == [0, len(rels) + 1]  # one filled it (+ the manifest's sha256s),
    # the other reused it


def test_local_paths_pass_through_untouched(converted):
    assert dataset_cache.local_copy(converted) == converted
    assert dataset_cache.local_copy(f"file://{converted}") == converted


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_the_trainers_train_on_a_bucket_url_and_record_the_url(converted, s3_bucket, tmp_path, monkeypatch,
                                                               framework):
    """``--data s3://...``: the trainers read the verified local copy; the exported policy names the
    dataset by its URL (never the cache's local path) and normalises exactly as from disk."""
    from helpers_train import train_briefly

    monkeypatch.setenv(dataset_cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    url = f"{s3_bucket}/train/cached/1.0.0"
    _upload(converted, url)

    def train(data: str, out: Path) -> dict:
        return train_briefly(framework, data, out, batch_size=4, history=1, action_horizon=2, image_size=[24, 32],
                             train_split="train[:75%]", eval_split="train[75%:]")

    remote, local = train(url, tmp_path / "remote"), train(str(converted), tmp_path / "local")
    assert remote["dataset"]["path"] == url and (remote["dataset"]["name"], remote["dataset"]["version"]) == (
        "cached", "1.0.0")
    assert str(tmp_path / "cache") not in json.dumps(remote)
    assert remote["normalization"] == local["normalization"]
