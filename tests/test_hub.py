"""``rldskit.hub``: dataset card, parquet view, ``datasets`` integration, push/pull, all offline.

The Hub is replaced by a recording fake ``api`` whose "remote" repo is a local folder; the
``datasets`` checks load that folder (and the parquet files) as a local path with
``HF_HUB_OFFLINE=1``. Nothing here touches the network or the stored Hub login."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub/datasets are imported (they read it once)
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pyarrow")
pytest.importorskip("grain")
datasets = pytest.importorskip("datasets")
hf = pytest.importorskip("huggingface_hub")
yaml = pytest.importorskip("yaml")

import rldskit  # noqa: E402
from rldskit import hub  # noqa: E402
from rldskit.episode import assert_episodes_equal  # noqa: E402
from rldskit.formats.tfds_dir import DatasetError  # noqa: E402
from rldskit.pipeline import convert  # noqa: E402
from rldskit.spec import load_spec  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402

CAM = (24, 32, 3)
TOKEN = "hf_FAKEtokenAbCdEf0123456789xyz"  # not a real token; must never surface in a message


def _arm_spec():
    spec = load_spec("so100_arm.v1")
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, CAM)
    return spec


@pytest.fixture(scope="module")
def arm(tmp_path_factory) -> Path:
    """Two cameras (the wrist one optional, absent in some steps), a language instruction, units and
    element names; 3 episodes of 6 steps and one of 1 step. Read-only: tests that write copy it."""
    root = tmp_path_factory.mktemp("hub_arm")
    write_synthetic(_arm_spec(), root / "cap", 3, 6, seed=0)
    write_synthetic(_arm_spec(), root / "cap", 1, 1, seed=1)
    return convert([root / "cap"], root / "data", name="arm", runner="inline", formats=("array_record",)).path


@pytest.fixture
def fresh(arm, tmp_path) -> Path:
    """A private copy of the dataset at ``<tmp>/data/arm/1.0.0`` (mtimes preserved)."""
    dst = tmp_path / "data" / "arm" / "1.0.0"
    shutil.copytree(arm, dst)
    return dst


@pytest.fixture(scope="module")
def reference(arm):
    """Episodes by id (from rldskit.open) and the StepSource over the step-major files."""
    from rldskit.loaders import StepSource

    ds = rldskit.open(arm)
    return SimpleNamespace(ds=ds, episodes={ep.episode_id: ep for ep in ds.episodes("train")},
                           source=StepSource(arm), spec=ds.spec)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(folder).parts}


class _FakeHub:
    """Stands in for ``HfApi``: the "remote" repo is a local folder. Records every call. An upload
    copies the folder's files (skipping ``.cache``) and, like the real resumable uploaders, skips
    files already committed unchanged (same size and mtime); ``fail_after=k`` raises after ``k``
    files of the next upload, with ``error`` as the message. ``commits`` records what each commit
    added and deleted (deletions matched by ``huggingface_hub``'s own pattern filter, as
    ``upload_folder(delete_patterns=...)`` does; ``.gitattributes`` is never deleted)."""

    def __init__(self, remote: Path, *, fail_after: int | None = None, error: str = "connection reset by peer",
                 fail_create: str | None = None):
        self.remote = remote
        self.calls: list[tuple[str, tuple, dict]] = []
        self.committed: dict[str, tuple[int, int]] = {}
        self.sent: list[list[str]] = []
        self.commits: list[dict[str, list[str]]] = []
        self.fail_after, self.error, self.fail_create = fail_after, error, fail_create

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None, **kw):
        self.calls.append(("list_repo_files", (repo_id,), dict(revision=revision, repo_type=repo_type, **kw)))
        return _remote_files(self.remote)

    def _delete(self, patterns, keep=()) -> list[str]:
        from huggingface_hub.utils import filter_repo_objects

        gone = [f for f in filter_repo_objects(_remote_files(self.remote), allow_patterns=patterns)
                if f != ".gitattributes" and f not in keep]
        for f in gone:
            (self.remote / f).unlink()
            self.committed.pop(f, None)
        return gone

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, revision=None, **kw):
        self.calls.append(("create_commit", (repo_id,), dict(operations=list(operations), commit_message=commit_message,
                                                              repo_type=repo_type, revision=revision, **kw)))
        paths = [op.path_in_repo for op in operations if type(op).__name__ == "CommitOperationDelete"]
        assert len(paths) == len(list(operations)), "only deletions are expected in create_commit"
        from rldskit.hub import _glob_escape

        self.commits.append({"added": [], "deleted": self._delete([_glob_escape(p) for p in paths])})
        return SimpleNamespace(oid="de1e7e")

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kw):
        self.calls.append(("create_repo", (repo_id,), dict(repo_type=repo_type, private=private, exist_ok=exist_ok, **kw)))
        if self.fail_create:
            raise PermissionError(self.fail_create)
        self.remote.mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_branch(self, repo_id, *, branch, repo_type=None, exist_ok=False, **kw):
        self.calls.append(("create_branch", (repo_id,), dict(branch=branch, repo_type=repo_type, exist_ok=exist_ok)))

    def _upload(self, folder_path) -> list[str]:
        folder = Path(folder_path)
        sent: list[str] = []
        self.sent.append(sent)
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder)
            if not f.is_file() or ".cache" in rel.parts:
                continue
            st = f.stat()
            if self.committed.get(rel.as_posix()) == (st.st_size, st.st_mtime_ns):
                continue
            if self.fail_after is not None and len(sent) >= self.fail_after:
                self.fail_after = None
                raise ConnectionError(self.error)
            (self.remote / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, self.remote / rel)
            self.committed[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
            sent.append(rel.as_posix())
        return sent


def _remote_files(remote: Path) -> list[str]:
    return sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*")
                  if p.is_file() and ".cache" not in p.relative_to(remote).parts)


class FakeLargeApi(_FakeHub):
    """huggingface_hub 0.25-1.x: ``upload_large_folder`` is the resumable uploader."""

    def upload_large_folder(self, repo_id, folder_path, *, repo_type, revision=None, private=None, **kw):
        self.calls.append(("upload_large_folder", (), dict(repo_id=repo_id, folder_path=folder_path, repo_type=repo_type,
                                                          revision=revision, private=private, **kw)))
        self.commits.append({"added": self._upload(folder_path), "deleted": []})


class FakeFolderApi(_FakeHub):
    """huggingface_hub 2.x: no ``upload_large_folder``; ``upload_folder`` resumes."""

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, revision=None, commit_message=None,
                      delete_patterns=None, **kw):
        self.calls.append(("upload_folder", (), dict(repo_id=repo_id, folder_path=folder_path, repo_type=repo_type,
                                                    revision=revision, commit_message=commit_message,
                                                    **({"delete_patterns": delete_patterns} if delete_patterns else {}),
                                                    **kw)))
        local = _remote_files(Path(folder_path))
        gone = self._delete(delete_patterns, keep=local) if delete_patterns else []
        self.commits.append({"added": self._upload(folder_path), "deleted": gone})  # one commit: both
        return SimpleNamespace(oid="c0ffee", commit_url="https://example.invalid/commit")


class SignatureCheckedApi:
    """Exposes exactly the methods the installed ``huggingface_hub.HfApi`` has, checks every call's
    arguments against their real signatures, records it and performs uploads like :class:`_FakeHub`."""

    def __init__(self, remote: Path):
        self.fake = _FakeHub(remote)
        self.calls = self.fake.calls

    def __getattr__(self, name):
        real = getattr(hf.HfApi, name)  # AttributeError (so hasattr is False) when the version lacks it
        sig = inspect.signature(real)

        def call(*args, **kwargs):
            sig.bind(self, *args, **kwargs)  # TypeError on a wrong or missing argument
            self.calls.append((name, args, kwargs))
            if name in ("upload_large_folder", "upload_folder"):
                if kwargs.get("delete_patterns"):
                    self.fake._delete(kwargs["delete_patterns"], keep=_remote_files(Path(kwargs["folder_path"])))
                self.fake._upload(kwargs["folder_path"])
            elif name == "create_repo":
                self.fake.remote.mkdir(parents=True, exist_ok=True)
            elif name == "list_repo_files":
                return _remote_files(self.fake.remote)
            elif name == "create_commit":
                paths = [op.path_in_repo for op in (args[1] if len(args) > 1 else kwargs["operations"])]
                from rldskit.hub import _glob_escape

                self.fake._delete([_glob_escape(p) for p in paths])

        return call


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def _check_rows(rows, reference, n_steps: int) -> None:
    """Every row of a step dataset (``datasets`` rows: images as PIL, vectors as lists) equals the
    dataset: images pixel for pixel against PIL-decoded StepSource frames, the rest against the
    episodes rldskit.open decodes."""
    spec = reference.spec
    assert len(rows) == n_steps
    seen = set()
    for g in range(n_steps):
        row = rows[g]
        assert row["global_step"] == g
        ep = reference.episodes[row["episode_id"]]
        t = row["step"]
        seen.add((row["episode_id"], t))
        step = reference.source[g]
        for path in spec.image_paths:
            if step[path]:
                np.testing.assert_array_equal(np.asarray(row[path]), _decode(step[path]), err_msg=f"{path} at step {g}")
                np.testing.assert_array_equal(np.asarray(row[path]), _decode(ep.steps[path][t]))
            else:
                assert row[path] is None, f"absent {path} at step {g} should be null"
        for path, leaf in spec.step_leaves.items():
            if path in spec.image_paths:
                continue
            want = ep.steps[path][t]
            if getattr(leaf, "dtype", None) == "string":
                assert row[path] == want
            else:
                got = np.asarray(row[path], dtype=leaf.np_dtype)
                np.testing.assert_array_equal(got, np.asarray(want), err_msg=f"{path} at step {g}")
    assert len(seen) == n_steps


# =========================================================================== parquet view and datasets


def test_parquet_view_files_schema_and_stale_files(arm, tmp_path):
    import pyarrow.parquet as pq

    n = rldskit.open(arm).num_steps("train")
    files = hub.parquet_view(arm, tmp_path / "view", rows_per_file=7)
    count = -(-n // 7)
    assert [f.name for f in files] == [f"train-{k:05d}-of-{count:05d}.parquet" for k in range(count)]
    tables = [pq.read_table(f) for f in files]
    assert [t.num_rows for t in tables] == [7] * (count - 1) + [n - 7 * (count - 1)]
    schema = tables[0].schema
    assert schema.names[:4] == list(hub.RESERVED_COLUMNS)
    meta = json.loads(schema.metadata[b"huggingface"])
    assert meta["info"]["features"] == {p: {"_type": "Image"} for p in _arm_spec().image_paths}
    action = schema.field("action").type
    assert (action.list_size, str(action.value_type)) == (7, "float")  # a fixed-size list
    assert str(schema.field("observation/images/front").type) == "struct<bytes: binary, path: string>"
    # the parquet schema is exactly what datasets' features of the spec describe
    assert hub.hf_features(_arm_spec()).arrow_schema.remove_metadata().equals(hub._arrow_schema(_arm_spec()).remove_metadata())
    again = hub.parquet_view(arm, tmp_path / "view", rows_per_file=1000)  # fewer files: stale ones go
    assert [f.name for f in again] == ["train-00000-of-00001.parquet"]
    assert sorted(p.name for p in (tmp_path / "view").iterdir()) == ["train-00000-of-00001.parquet"]
    with pytest.raises(KeyError, match="no split 'test'"):
        hub.parquet_view(arm, tmp_path / "v2", split="test")
    with pytest.raises(ValueError, match="rows_per_file"):
        hub.parquet_view(arm, tmp_path / "v2", rows_per_file=0)


def test_datasets_loads_the_parquet_view_with_image_features(arm, reference, tmp_path):
    files = hub.parquet_view(arm, tmp_path / "view", rows_per_file=7)
    got = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                                cache_dir=str(tmp_path / "cache"))
    assert isinstance(got.features["observation/images/front"], datasets.Image)
    assert isinstance(got.features["observation/images/wrist"], datasets.Image)
    _check_rows(got, reference, len(reference.source))
    present = [bool(x) for x in got["observation/images/wrist_present"]]
    assert True in present and False in present  # both the frame and its absence are exercised


def test_to_hf_dataset_features_values_and_cache(arm, reference, tmp_path):
    d = hub.to_hf_dataset(arm, cache_dir=tmp_path / "c")
    assert d.features == hub.hf_features(reference.spec)
    assert d.split == "train"
    assert isinstance(d.features["observation/images/front"], datasets.Image)
    assert d.features["observation/joint_position"] == datasets.List(datasets.Value("float32"), length=6)
    _check_rows(d, reference, len(reference.source))
    cached = list((tmp_path / "c").glob("*.arrow"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    d2 = hub.to_hf_dataset(arm, cache_dir=tmp_path / "c")  # re-used, not rewritten
    assert cached[0].stat().st_mtime_ns == mtime and len(d2) == len(d)
    with pytest.raises(KeyError):
        hub.to_hf_dataset(arm, "validation", cache_dir=tmp_path / "c")


# =========================================================================== card


def test_dataset_card_front_matter_schema_stats_and_provenance(fresh):
    from rldskit.loaders import StepIndex, compute_stats

    text = hub.dataset_card(fresh, repo_id="me/arm")
    fm = _front_matter(text)
    assert fm["license"] == "other"
    assert fm["task_categories"] == ["robotics"]
    assert {"rlds", "rldskit"} <= set(fm["tags"])
    assert fm["configs"] == [{"config_name": "default",
                              "data_files": [{"split": "train", "path": "parquet/train-*.parquet"}]}]
    card = hf.DatasetCard(text)  # huggingface_hub's own parser accepts it
    assert card.data.license == "other"
    assert "| `observation/joint_position` | float32 | (6,) | rad | shoulder_pan, shoulder_lift" in text
    assert "| `observation/images/front` | image (jpeg, uint8) | (24, 32, 3) |" in text
    assert "| train | 4 | 19 |" in text
    assert "| `origin:synthetic` | 4 |" in text
    assert "No `stats.json`" in text
    assert "load_dataset('me/arm', split='train')" in text and "pull('me/arm'" in text
    manifest = json.loads((fresh / "manifest.json").read_text())
    root = manifest["roots"][0]
    assert ("Converted by rldskit from 4 input episodes: 4 written, 0 quarantined (listed with their reasons in "
            f"`manifest.json`); sources: `cap` (4 inputs, sha256 `{root['sha256'][:16]}`).") in text
    legacy = dict(manifest, inputs=[dict(i, source=f"/home/me/robot/cap/{i['source']}") for i in manifest["inputs"]])
    del legacy["roots"]  # a manifest written before inputs were recorded relative to their source
    (fresh / "manifest.json").write_text(json.dumps(legacy))
    text = hub.dataset_card(fresh, repo_id="me/arm")
    assert "Converted by rldskit from 4 input episodes" in text and "/home/me" not in text and "sources:" not in text
    (fresh / "manifest.json").write_text(json.dumps(manifest))

    stats = compute_stats(StepIndex.load(fresh))
    (fresh / "stats.json").write_text(json.dumps(stats))
    text = hub.dataset_card(fresh, license="cc-by-4.0")
    assert _front_matter(text)["license"] == "cc-by-4.0"
    stats_part = text.split("## Statistics", 1)[1].split("## Provenance", 1)[0]
    row = next(line for line in stats_part.splitlines() if line.startswith("| `action` |"))
    assert f"{stats['action']['mean'][0]:.4g}" in row and f"{stats['action']['max'][6]:.4g}" in row
    assert row.rstrip().endswith(f"| {stats['action']['count']} |")
    (fresh / "stats.json").write_text("{not json")  # another tool's half-written file: no crash
    assert "No `stats.json`" in hub.dataset_card(fresh)


# =========================================================================== push


def test_push_creates_a_private_dataset_repo_and_uploads_everything(fresh, reference, tmp_path):
    remote = tmp_path / "remote"
    api = FakeLargeApi(remote)
    res = hub.push(fresh, "me/arm", api=api, token=TOKEN)
    names = [c[0] for c in api.calls]
    assert names == ["create_repo", "list_repo_files", "upload_large_folder"]
    assert api.calls[0][1] == ("me/arm",)
    assert api.calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert api.calls[1][2] == {"repo_type": "dataset", "revision": None}
    up = api.calls[2][2]
    assert up["repo_type"] == "dataset" and up["private"] is True and up["repo_id"] == "me/arm"
    assert up["revision"] is None
    staging = Path(up["folder_path"])
    assert staging == Path(res["staging"]) and staging.is_relative_to(fresh.parent / ".rldskit-hub")
    assert res["url"] == "https://huggingface.co/datasets/me/arm" and res["method"] == "upload_large_folder"

    got = _files(remote)
    for rel, data in _files(fresh).items():  # every dataset file, byte for byte
        assert got.pop(rel) == data, rel
    readme = got.pop("README.md").decode()
    assert _front_matter(readme)["configs"][0]["data_files"][0]["path"] == "parquet/train-*.parquet"
    assert sorted(got) == ["parquet/train-00000-of-00001.parquet"]  # nothing else
    assert sorted(res["files"]) == sorted(_files(remote))

    # the "remote" repo works for both readers: rldskit.open and datasets.load_dataset
    for a, b in zip(rldskit.open(remote).episodes("train"), reference.ds.episodes("train")):
        assert_episodes_equal(a, b)
    loaded = datasets.load_dataset(str(remote), split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(loaded.features["observation/images/front"], datasets.Image)
    _check_rows(loaded, reference, len(reference.source))
    # the staging folder does not make the dataset's parent ambiguous to rldskit.open
    assert rldskit.open(fresh.parent).path == fresh
    assert rldskit.open(fresh.parent.parent).path == fresh


def test_push_public_revision_license_and_the_2x_upload_folder(fresh, tmp_path):
    api = FakeFolderApi(tmp_path / "remote")
    res = hub.push(fresh, "me/arm2", api=api, private=False, revision="v1", license="apache-2.0",
                   commit_message="first release", rows_per_file=5)
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "list_repo_files", "upload_folder"]
    assert api.calls[0][2]["private"] is False
    assert api.calls[1][2] == {"branch": "v1", "repo_type": "dataset", "exist_ok": True}
    assert api.calls[2][2] == {"repo_type": "dataset", "revision": "v1"}
    up = api.calls[3][2]
    assert (up["repo_type"], up["revision"], up["commit_message"]) == ("dataset", "v1", "first release")
    assert res["method"] == "upload_folder" and res["commit"] == "c0ffee"
    assert len(res["parquet"]) == 4  # 19 steps, 5 per file
    assert _front_matter((tmp_path / "remote" / "README.md").read_text())["license"] == "apache-2.0"


def test_calls_match_the_installed_huggingface_hub_signatures(fresh, tmp_path):
    api = SignatureCheckedApi(tmp_path / "remote")
    (fresh / "stats.json").write_text(json.dumps({"reward": {"mean": 0.5, "std": 0.1, "min": 0, "max": 1, "count": 19}}))
    res = hub.push(fresh, "me/arm", api=api, revision="dev", commit_message="m")
    expected = "upload_large_folder" if hasattr(hf.HfApi, "upload_large_folder") else "upload_folder"
    assert res["method"] == expected
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "list_repo_files", expected]
    assert (tmp_path / "remote" / "README.md").is_file() and (tmp_path / "remote" / "dataset_info.json").is_file()
    (fresh / "stats.json").unlink()  # a pruning push, with the real signatures too
    res = hub.push(fresh, "me/arm", api=api, revision="dev", commit_message="m")
    assert res["deleted"] == ["stats.json"] and not (tmp_path / "remote" / "stats.json").exists()
    assert [c[0] for c in api.calls][4:] == ["create_repo", "create_branch", "list_repo_files", expected] + \
        (["create_commit"] if expected == "upload_large_folder" else [])
    sig = inspect.signature(hf.snapshot_download)

    def snapshot(**kw):
        sig.bind(**kw)
        hub._copy_local(tmp_path / "remote", Path(kw["local_dir"]), kw.get("allow_patterns"))

    assert rldskit.open(hub.pull("me/arm", tmp_path / "out", revision="dev", allow_patterns=["*"],
                                 token=TOKEN, snapshot=snapshot)).num_episodes() == 4


def test_interrupted_push_resumes_on_rerun_without_rebuilding(fresh, tmp_path):
    remote = tmp_path / "remote"
    api = FakeLargeApi(remote, fail_after=3)
    with pytest.raises(hub.HubError, match="upload to me/arm failed: ConnectionError"):
        hub.push(fresh, "me/arm", api=api)
    staging = Path(api.calls[-1][2]["folder_path"])
    first = list(api.sent[0])
    assert len(first) == 3 and len(_files(remote)) == 3
    before = {p: (staging / p).stat().st_mtime_ns for p in _files(staging)}

    res = hub.push(fresh, "me/arm", api=api)  # same command again
    assert Path(res["staging"]) == staging
    assert {p: (staging / p).stat().st_mtime_ns for p in _files(staging)} == before  # nothing rebuilt
    assert set(api.sent[1]) == set(before) - set(first)  # only the rest was sent
    assert _files(remote) == _files(staging)
    assert [c[0] for c in api.calls] == ["create_repo", "list_repo_files", "upload_large_folder"] * 2

    # a changed dataset is re-staged: new stats -> new card; the view is rebuilt from changed files
    (fresh / "stats.json").write_text(json.dumps({"reward": {"mean": 0.5, "std": 0.1, "min": 0, "max": 1, "count": 19}}))
    hub.push(fresh, "me/arm", api=api)
    assert set(api.sent[2]) == {"stats.json", "README.md"}  # the parquet view did not change
    assert "| `reward` | 0.5 | 0.1 | 0 | 1 | 19 |" in (remote / "README.md").read_text()


def test_token_never_appears_in_errors(fresh, tmp_path, monkeypatch):
    msg = f"401 Client Error: Unauthorized (token {TOKEN}); headers={{'authorization': 'Bearer {TOKEN}'}}"
    api = FakeLargeApi(tmp_path / "remote", fail_create=msg)
    with pytest.raises(hub.HubError) as ei:
        hub.push(fresh, "me/arm", api=api, token=TOKEN)
    text = "".join(traceback.format_exception(ei.value))
    assert TOKEN not in text and TOKEN not in repr(ei.value)
    assert "401 Client Error" in str(ei.value) and "***" in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__context__ is None

    odd = "sekrit-not-shaped-like-a-hub-token"  # scrubbed because it is the token in use (from HF_TOKEN)
    monkeypatch.setenv("HF_TOKEN", odd)
    api = FakeLargeApi(tmp_path / "remote2", fail_after=0, error=f"upload refused for credentials {odd}")
    with pytest.raises(hub.HubError) as ei:
        hub.push(fresh, "me/arm", api=api)
    assert odd not in "".join(traceback.format_exception(ei.value))

    def snapshot(**kw):
        raise OSError(f"cannot reach the Hub with {kw['token']}")

    with pytest.raises(hub.HubError) as ei:
        hub.pull("me/arm", tmp_path / "out", token=TOKEN, snapshot=snapshot)
    assert TOKEN not in str(ei.value) and "cannot reach the Hub" in str(ei.value)


def test_bad_inputs(tmp_path, fresh):
    api = FakeLargeApi(tmp_path / "remote")
    with pytest.raises(DatasetError, match="no such file"):
        hub.push(tmp_path / "missing", "me/x", api=api)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a TFDS dataset"):
        hub.push(tmp_path / "plain", "me/x", api=api)
    with pytest.raises(ValueError, match="owner/name"):
        hub.push(fresh, "me/x/y", api=api)
    assert api.calls == []  # nothing reached the Hub
    with pytest.raises(DatasetError):
        hub.dataset_card(tmp_path / "plain")
    with pytest.raises(DatasetError):
        hub.pull(tmp_path / "plain", tmp_path / "out")
    with pytest.raises(ValueError, match="no such local folder"):
        hub.pull(str(tmp_path / "nope"), tmp_path / "out2")
    with pytest.raises(ValueError, match="neither a local folder"):
        hub.pull("bad id!", tmp_path / "out3")
    with pytest.raises(ValueError, match="inside the source"):
        hub.pull(fresh, fresh / "sub")


# =========================================================================== pull


def test_pull_from_a_local_folder_and_through_snapshot(fresh, reference, tmp_path):
    remote = tmp_path / "remote"
    hub.push(fresh, "me/arm", api=FakeLargeApi(remote))
    got = hub.pull(remote, tmp_path / "out")
    assert got == tmp_path / "out"
    for a, b in zip(rldskit.open(got).episodes("train"), reference.ds.episodes("train")):
        assert_episodes_equal(a, b)
    assert (got / "README.md").is_file() and (got / "parquet").is_dir()

    calls = []

    def snapshot(**kw):  # what huggingface_hub.snapshot_download does, from the local "remote"
        calls.append(kw)
        hub._copy_local(remote, Path(kw["local_dir"]), kw.get("allow_patterns"))
        return kw["local_dir"]

    got = hub.pull("me/arm", tmp_path / "out2", token=TOKEN, revision="v1", snapshot=snapshot)
    assert calls == [{"repo_id": "me/arm", "repo_type": "dataset", "local_dir": str(tmp_path / "out2"),
                      "revision": "v1", "token": TOKEN}]
    assert rldskit.open(got).num_episodes() == 4

    only = hub.pull("me/arm", tmp_path / "out3", allow_patterns=["README.md", "parquet/*"], snapshot=snapshot)
    assert sorted(_files(only)) == ["README.md", "parquet/train-00000-of-00001.parquet"]

    def corrupting(**kw):
        snapshot(**kw)
        shard = next(Path(kw["local_dir"]).glob("steps/*"))
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))

    with pytest.raises(hub.HubError, match="sha256 differs"):
        hub.pull("me/arm", tmp_path / "out4", snapshot=corrupting)


# =========================================================================== CLI and imports


def _cli(argv):
    ap = argparse.ArgumentParser(prog="rldskit")
    sub = ap.add_subparsers(dest="command", required=True)
    hub.register_cli(sub)
    args = ap.parse_args(argv)
    return args.func(args)


def test_cli_push_pull_and_exit_codes(fresh, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # never the stored login
    made = []

    def make_api(token):
        made.append(token)
        return api

    monkeypatch.setattr(hub, "_make_api", make_api)
    api = FakeLargeApi(tmp_path / "remote")
    assert _cli(["push", str(fresh), "--repo", "me/cli", "--license", "mit"]) == 0
    assert made == [TOKEN]
    assert api.calls[0][2]["private"] is True
    out = capsys.readouterr().out
    assert "https://huggingface.co/datasets/me/cli" in out and "private" in out and TOKEN not in out

    api = FakeLargeApi(tmp_path / "remote2")
    assert _cli(["push", str(fresh), "--repo", "me/pub", "--public"]) == 0
    assert api.calls[0][2]["private"] is False

    api = FakeLargeApi(tmp_path / "remote3", fail_after=1, error=f"HTTP 500 (auth {TOKEN})")
    assert _cli(["push", str(fresh), "--repo", "me/fail"]) == 1
    err = capsys.readouterr().err
    assert "upload to me/fail failed" in err and "re-run" in err and TOKEN not in err

    assert _cli(["push", str(tmp_path / "missing"), "--repo", "me/x"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        _cli(["push", str(fresh)])  # --repo is required
    assert ei.value.code == 2

    assert _cli(["pull", str(tmp_path / "remote"), "--out", str(tmp_path / "pulled")]) == 0
    assert rldskit.open(tmp_path / "pulled").num_episodes() == 4
    assert _cli(["pull", str(tmp_path / "missing"), "--out", str(tmp_path / "p2")]) == 2


def test_import_rldskit_hub_is_light():
    code = ("import json, sys, rldskit.hub; "
            "print(json.dumps(sorted(m for m in ('huggingface_hub', 'datasets', 'pyarrow', 'grain', 'tensorflow') "
            "if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


# =========================================================================== no local paths (issue 12, item 4)


LEAK = "LEAKROOT_q7x3"  # a distinctive folder name above the capture root


def test_no_local_path_reaches_the_dataset_stats_report_or_the_pushed_repo(tmp_path, monkeypatch, capsys):
    """convert -> stats -> report -> push, all through the CLI, with the episodes under a
    distinctive absolute path and two of them quarantined: no written file (the dataset, the
    report, the staging folder, the "remote" repo), read raw and decoded (parquet rows, every
    ArrayRecord record, zstd), names the capture root, its parent or the test's folder."""
    from helpers_leaks import leaks

    from rldskit.cli import main

    root = tmp_path / LEAK / "episodes" / "pi5_donkey"
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
    write_synthetic(spec, root, 4, 8, seed=3)
    eps = sorted(p for p in root.iterdir() if p.is_dir())
    f = eps[1] / "steps" / "000000.jsonl"
    lines = f.read_text().splitlines(True)
    step = json.loads(lines[2])
    step["action"] = [float("nan"), 0.1]
    lines[2] = json.dumps(step) + "\n"
    f.write_text("".join(lines))
    (eps[2] / "frames" / "image" / "000003.jpg").unlink()

    data = tmp_path / "out" / "data"
    assert main(["convert", str(root), "--out", str(data), "--name", "donkey", "--runner", "inline"]) == 1
    ds = data / "donkey" / "1.0.0"
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["counts"]["quarantined"] == 2
    assert sorted(q["key"] for q in manifest["quarantine"]) == [f"pi5_donkey/{eps[1].name}", f"pi5_donkey/{eps[2].name}"]
    assert [i["source"] for i in manifest["inputs"]] == [f"pi5_donkey/{e.name}" for e in eps]
    assert main(["stats", str(ds), "--by", "tag,control_role,source"]) == 0
    by_source = json.loads((ds / "stats.json").read_text())["_dataset"]["by"]["source"]
    assert sorted(by_source) == [f"pi5_donkey/{eps[0].name}", f"pi5_donkey/{eps[3].name}"]
    report = tmp_path / "out" / "report"
    assert main(["report", str(ds), "--out", str(report)]) == 0

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    remote = tmp_path / "out" / "remote"
    api = FakeFolderApi(remote)
    monkeypatch.setattr(hub, "_make_api", lambda token: api)
    assert main(["push", str(ds), "--repo", "me/leak"]) == 0
    capsys.readouterr()
    assert (remote / "README.md").is_file() and (remote / "parquet").is_dir()
    staging = ds.parent / ".rldskit-hub"
    needles = [str(root), str(root.resolve()), str(root.parent), LEAK, str(tmp_path), str(tmp_path.resolve())]
    found = leaks([ds, report, staging, remote], needles)
    assert found == {}, found
    # and the pulled copy still verifies against the manifest checksums
    assert rldskit.open(hub.pull(remote, tmp_path / "pulled")).num_episodes() == 2


# =========================================================================== pruning (issue 12, item 7)


#: files a user committed to the repo on the Hub (or an older layout left): never rldskit's to delete
UNRELATED = {".gitattributes": "*.parquet filter=lfs\n", "LICENSE": "MIT\n", "docs/notes.md": "how we recorded\n",
             "steps/NOTES.md": "a user's note beside the step files\n", "parquet/extra.parquet": "not ours\n",
             "v0/arm-train.array_record-00000-of-00004": "an older version kept in a subfolder\n",
             "v0/steps/arm-train.steps.array_record-00000-000": "its steps\n", "notes-manifest.json": "{}\n"}


def _many_shards(arm, tmp_path) -> Path:
    """The arm episodes converted into 3 ArrayRecord shards at <tmp>/data/arm/1.0.0 (the 1-step
    episode shares the last one)."""
    res = convert([arm.parents[2] / "cap"], tmp_path / "data", name="arm", runner="inline",
                  formats=("array_record",), shard_size_mb=1e-4)
    assert sum(o["layout"] == "episodes" for o in res.manifest["outputs"]) == 3
    return res.path


def _reconvert_to_one_shard(arm, ds: Path) -> None:
    convert([arm.parents[2] / "cap"], ds.parents[1], name="arm", runner="inline", formats=("array_record",),
            overwrite=True)


def _add_unrelated(remote: Path) -> None:
    for rel, text in UNRELATED.items():
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (remote / rel).write_text(text)


def test_push_deletes_files_gone_from_the_dataset_in_the_upload_commit(arm, reference, tmp_path):
    ds = _many_shards(arm, tmp_path)
    remote = tmp_path / "remote"
    api = FakeFolderApi(remote)
    first = hub.push(ds, "me/arm", api=api, rows_per_file=5)
    assert first["deleted"] == [] and "delete_patterns" not in api.calls[-1][2]  # nothing to prune yet
    _add_unrelated(remote)
    old = set(_remote_files(remote))

    _reconvert_to_one_shard(arm, ds)  # 3 shards -> 1, 4 parquet files -> 1
    res = hub.push(ds, "me/arm", api=api)
    staged = set(res["files"])
    stale = sorted(old - staged - set(UNRELATED))
    assert stale == sorted([f"arm-train.array_record-0000{k}-of-00003" for k in range(3)]
                           + [f"steps/arm-train.steps.array_record-0000{k}-000" for k in range(1, 3)]
                           + [f"parquet/train-0000{k}-of-00004.parquet" for k in range(4)])
    commit = api.commits[-1]
    assert sorted(commit["deleted"]) == stale == sorted(res["deleted"])  # deleted in the upload's commit...
    assert "arm-train.array_record-00000-of-00001" in commit["added"]  # ...which adds the new shard
    assert "parquet/train-00000-of-00001.parquet" in commit["added"]
    assert [c[0] for c in api.calls][-3:] == ["create_repo", "list_repo_files", "upload_folder"]
    assert set(_remote_files(remote)) == staged | set(UNRELATED)  # the user's files survive
    assert all((remote / rel).read_text() == text for rel, text in UNRELATED.items())
    # the repo is the dataset again: TFDS shards and the parquet view give each step exactly once
    for a, b in zip(rldskit.open(remote).episodes("train"), reference.ds.episodes("train")):
        assert_episodes_equal(a, b)
    loaded = datasets.load_dataset(str(remote), split="train", cache_dir=str(tmp_path / "cache"))
    _check_rows(loaded, reference, len(reference.source))
    # a third push with nothing stale deletes nothing
    hub.push(ds, "me/arm", api=api)
    assert api.commits[-1]["deleted"] == [] and "delete_patterns" not in api.calls[-1][2]


def test_push_no_prune_leaves_stale_files_and_reports_them(arm, tmp_path, monkeypatch, capsys):
    ds = _many_shards(arm, tmp_path)
    remote = tmp_path / "remote"
    api = FakeFolderApi(remote)
    hub.push(ds, "me/arm", api=api)
    before = set(_remote_files(remote))
    _reconvert_to_one_shard(arm, ds)
    res = hub.push(ds, "me/arm", api=api, prune=False)
    assert res["deleted"] == [] and api.commits[-1]["deleted"] == []
    assert "delete_patterns" not in api.calls[-1][2]
    assert set(res["stale"]) == before - set(res["files"]) and res["stale"]
    assert set(res["stale"]) <= set(_remote_files(remote))

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub, "_make_api", lambda token: api)
    assert _cli(["push", str(ds), "--repo", "me/arm", "--no-prune"]) == 0
    out = capsys.readouterr().out
    assert f"{len(res['stale'])} files no longer in the dataset were left in the repo (--no-prune)" in out
    assert _cli(["push", str(ds), "--repo", "me/arm"]) == 0
    assert f"deleted {len(res['stale'])} files no longer in the dataset" in capsys.readouterr().out
    assert set(_remote_files(remote)) == set(res["files"])


def test_push_with_upload_large_folder_deletes_in_one_commit_after_the_upload(arm, tmp_path):
    ds = _many_shards(arm, tmp_path)
    remote = tmp_path / "remote"
    api = FakeLargeApi(remote)
    hub.push(ds, "me/arm", api=api)
    _add_unrelated(remote)
    _reconvert_to_one_shard(arm, ds)
    api.fail_after = 1  # an interrupted upload deletes nothing
    with pytest.raises(hub.HubError):
        hub.push(ds, "me/arm", api=api)
    assert "arm-train.array_record-00002-of-00003" in _remote_files(remote)
    assert "create_commit" not in [c[0] for c in api.calls]
    res = hub.push(ds, "me/arm", api=api)
    assert [c[0] for c in api.calls][-4:] == ["create_repo", "list_repo_files", "upload_large_folder", "create_commit"]
    op = api.calls[-1][2]
    assert op["repo_type"] == "dataset" and "rldskit" in op["commit_message"]
    assert sorted(api.commits[-1]["deleted"]) == sorted(res["deleted"]) and len(res["deleted"]) == 5  # 3 shards, 2 step files
    assert set(_remote_files(remote)) == set(res["files"]) | set(UNRELATED)
