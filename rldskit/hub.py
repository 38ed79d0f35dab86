"""Hugging Face Hub: dataset cards, a parquet view of the steps, ``datasets`` integration, push and pull.

A converted dataset version folder (``<data_dir>/<name>/<version>/``: TFDS files, ``rldskit_spec.json``,
``episodes.parquet`` and the step-major ``steps/``) is published as a Hub *dataset* repo laid out as::

    README.md                      dataset card (YAML front matter + schema, counts, stats, provenance)
    parquet/<split>-00000-of-000NN.parquet   one row per step (for ``datasets`` and the Hub viewer)
    dataset_info.json, features.json, rldskit_spec.json, manifest.json, [stats.json]
    <name>-<split>.<format>-XXXXX-of-YYYYY    the TFDS RLDS episode shards
    episodes.parquet, steps/...               the step index and step-major records (rldskit loaders)

so the repo root *is* the dataset version folder: ``rldskit.open`` and ``tfds.builder_from_directory``
read a downloaded snapshot as is, and the card's ``configs`` point ``datasets.load_dataset(repo)`` at
``parquet/`` only.

* :func:`dataset_card`: the README (license, ``task_categories: robotics``, tags, ``configs``; a
  schema table with dtypes, shapes, units and element names; episodes and steps per split; per-feature
  statistics from ``stats.json`` when present; counts of the episodes' provenance tags; how to load).
* :func:`parquet_view`: the steps as parquet files. Columns: ``episode_id``, ``episode_index`` (the
  episode's position in its split), ``step`` (index within the episode), ``global_step`` (index
  within the split), then every step feature under its ``/``-joined path: low-dimensional features as
  numbers or (nested) fixed-size lists, the RLDS flags and ``_present`` masks as booleans, text as
  strings, images as ``{"bytes": <JPEG/PNG>, "path": None}`` structs (null for an absent optional
  frame). The schema carries ``datasets``' feature metadata for the image columns, so
  ``load_dataset("parquet", ...)`` and the Hub viewer give ``datasets.Image`` columns. Images are
  read from the step-major ArrayRecord files with :class:`~rldskit.loaders.StepSource`, one batched
  read per row group (128 steps).
* :func:`to_hf_dataset`: the same rows as a memory-mapped ``datasets.Dataset`` whose features
  (:func:`hf_features`) come from the :class:`~rldskit.spec.EpisodeSpec`.
* :func:`push`: ``create_repo(repo_type="dataset", private=True by default)`` then one resumable
  folder upload of a staging folder (hard links to the dataset's files, the card and the parquet
  view). The staging folder lives beside the dataset
  (``<data_dir>/<name>/.rldskit-hub/<version>--<repo>/upload``, else under the temp dir) and is re-used:
  **re-running an interrupted push resumes it**. With ``huggingface_hub`` 0.25-1.x the upload is
  ``HfApi.upload_large_folder`` (its resume state sits in the staging folder's
  ``.cache/huggingface/``); with 2.x, where ``upload_folder`` is the resumable, multi-commit
  uploader (already-committed files are skipped, uploaded chunks deduplicated), it is
  ``upload_folder``. Either way nothing is rebuilt on a re-run (the parquet view and card are cached
  by a fingerprint of the dataset's files), so unchanged files are recognised as already uploaded.
* **Pruning** (the default; ``prune=False`` / ``--no-prune`` turns it off): the repo mirrors the
  dataset. Files an earlier push uploaded that the dataset no longer has (fewer shards after a
  re-conversion, a parquet view with fewer files, a removed ``stats.json``) are deleted *in the
  upload's commit* (``upload_folder(delete_patterns=...)``, exact names; with
  ``upload_large_folder``, which cannot delete, in one commit right after the upload has
  finished, so an interrupted push never deletes). Only paths of the layout rldskit writes
  (:func:`managed_path`: the TFDS metadata, ``manifest.json``, ``stats.json``,
  ``episodes.parquet``, ``<name>-<split>.<format>-NNNNN-of-NNNNN`` shards at the root,
  ``steps/*.steps.array_record-NNNNN-NNN`` and ``parquet/<split>-NNNNN-of-NNNNN.parquet``) are ever
  deleted: ``README.md``, ``.gitattributes``, anything else a user committed (a licence, notes,
  other versions in sub-folders) stays, and other branches are not touched. Why the default: a
  stale parquet file matches the card's ``parquet/<split>-*.parquet`` glob, so without pruning
  ``datasets.load_dataset`` would return steps twice, and a stale shard would sit beside the ones
  ``dataset_info.json`` names; a deletion is a commit, so the old files stay in the repo's history.
* :func:`pull`: ``snapshot_download(repo_type="dataset", local_dir=out)`` (or a copy of a local
  folder), then the dataset is opened with ``rldskit.open`` and checked against
  ``dataset_info.json`` and the ``manifest.json`` checksums.
* :func:`register_cli`: ``rldskit push PATH --repo ID [--public] [--license L] [--no-prune]`` and
  ``rldskit pull REPO --out DIR``; exit 0 ok, 1 upload/download failure, 2 usage.

Tokens: the ``token`` argument, else ``HF_TOKEN``, else the stored ``huggingface-cli login``
(``huggingface_hub.get_token()``). A token is never printed; errors from the Hub client are re-raised
as :class:`HubError` with the token (and anything shaped like one) replaced by ``***`` and without the
original exception chained.

``import rldskit.hub`` is cheap: huggingface_hub, datasets, pyarrow and Grain are imported inside the
functions that need them.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit.formats.tfds_dir import LAYOUT_FILES, MANIFEST_FILE, STATS_FILE, DatasetLayout
from rldskit.spec import EpisodeSpec, Image, Text

__all__ = ["dataset_card", "parquet_view", "hf_features", "to_hf_dataset", "stage", "push", "pull", "register_cli",
           "managed_path", "HubError", "PARQUET_DIR", "CARD_FILE", "RESERVED_COLUMNS"]

PARQUET_DIR = "parquet"
CARD_FILE = "README.md"
#: columns of the parquet view before the step features
RESERVED_COLUMNS = ("episode_id", "episode_index", "step", "global_step")
#: steps per parquet row group and per batched StepSource read
ROW_GROUP_ROWS = 128
#: default parquet file size aimed at when ``rows_per_file`` is not given
TARGET_FILE_BYTES = 256 * 2**20
#: bump when the parquet view's layout changes (invalidates cached views)
_VIEW_VERSION = 1
_STAGING_DIR = ".rldskit-hub"
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;}]+")
_HUB_URL = "https://huggingface.co/datasets/{}"
#: repo paths of the layout rldskit writes (anchored at the repo root): the only ones a push deletes
_MANAGED_RE = re.compile("|".join(map(re.escape, LAYOUT_FILES))
                         + r"|[^/]+-[^/]+\.(?:tfrecord|array_record)-\d{5}-of-\d{5}"
                         r"|steps/[^/]+\.steps\.array_record-\d{5}-\d{3}"
                         r"|parquet/[^/]+-\d{5}-of-\d{5}\.parquet")


class HubError(RuntimeError):
    """An upload to or download from the Hub failed. The message never contains the token."""


# =========================================================================== tokens and errors


def _resolve_token(token: str | None, *, stored: bool) -> str | None:
    """``token``, else ``$HF_TOKEN``, else (``stored``) the ``huggingface-cli login`` token."""
    if token:
        return token
    env = os.environ.get("HF_TOKEN")
    if env:
        return env
    if stored:
        try:
            from huggingface_hub import get_token
        except ImportError:
            return None
        return get_token()
    return None


def _scrub(text: str, secrets: Sequence[str | None] = ()) -> str:
    """``text`` with every secret, anything shaped like a Hub token and bearer credentials replaced."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _HF_TOKEN_RE.sub("hf_***", text)
    return _BEARER_RE.sub(lambda m: f"{m.group(1)} ***", text)


def _call(what: str, fn: Callable[..., Any], *args: Any, secrets: Sequence[str | None] = (), **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; any ``Exception`` becomes a :class:`HubError` with a scrubbed message
    and no chained cause (a traceback of the original could print the token)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - every client error is reported the same way
        detail = str(e) or repr(e)
        msg = _scrub(f"{what} failed: {type(e).__name__}: {detail}", (*secrets, os.environ.get("HF_TOKEN")))
    raise HubError(msg)


def _make_api(token: str | None):
    """The default Hub client (tests replace this factory)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _default_snapshot() -> Callable[..., Any]:
    from huggingface_hub import snapshot_download

    return snapshot_download


# =========================================================================== schema helpers


def _open(path: str | os.PathLike):
    from rldskit.formats.tfds_dir import open_dataset

    return open_dataset(path)


def _check_columns(spec: EpisodeSpec) -> None:
    clash = [c for c in RESERVED_COLUMNS if c in spec.step_leaves]
    if clash:
        raise ValueError(f"spec {spec.id}: step features {clash} collide with the parquet view's columns "
                         f"{list(RESERVED_COLUMNS)}")


def _arrow_base(dtype: str):
    import pyarrow as pa

    if dtype == "string":
        return pa.string()
    if dtype == "bool":
        return pa.bool_()
    return pa.from_numpy_dtype(np.dtype(dtype))


def _arrow_type(leaf: Any):
    import pyarrow as pa

    if isinstance(leaf, Image):
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if isinstance(leaf, Text):
        return pa.string()
    t = _arrow_base(leaf.dtype)
    for d in reversed(leaf.shape):
        t = pa.list_(t) if d is None else pa.list_(t, d)
    return t


def _arrow_schema(spec: EpisodeSpec):
    """The parquet view's schema: plain Arrow types plus ``datasets``' feature metadata for the image
    columns (``{"_type": "Image"}``); ``datasets`` infers every other column from its Arrow type."""
    import pyarrow as pa

    _check_columns(spec)
    fields = [pa.field("episode_id", pa.string()), pa.field("episode_index", pa.int64()),
              pa.field("step", pa.int64()), pa.field("global_step", pa.int64())]
    fields += [pa.field(p, _arrow_type(leaf)) for p, leaf in spec.step_leaves.items()]
    images = {p: {"_type": "Image"} for p in spec.image_paths}
    meta = {b"huggingface": json.dumps({"info": {"features": images}}).encode()}
    return pa.schema(fields, metadata=meta)


def hf_features(spec: EpisodeSpec):
    """``datasets.Features`` of one step row (the parquet view's columns): ``Image()`` for images,
    ``Value("string")`` for text, ``Value(dtype)`` nested in fixed-length ``List`` s for tensors."""
    import datasets

    _check_columns(spec)
    seq = getattr(datasets, "List", None)

    def wrap(f: Any, n: int | None) -> Any:
        length = -1 if n is None else n
        return seq(f, length=length) if seq is not None else datasets.Sequence(f, length=length)

    feats: dict[str, Any] = {"episode_id": datasets.Value("string"), "episode_index": datasets.Value("int64"),
                             "step": datasets.Value("int64"), "global_step": datasets.Value("int64")}
    for path, leaf in spec.step_leaves.items():
        if isinstance(leaf, Image):
            feats[path] = datasets.Image()
        elif isinstance(leaf, Text):
            feats[path] = datasets.Value("string")
        else:
            f = datasets.Value(leaf.dtype)
            for d in reversed(leaf.shape):
                f = wrap(f, d)
            feats[path] = f
    return datasets.Features(feats)


# =========================================================================== step rows


def _load_index(ds: Any, split: str):
    from rldskit.formats.step_index import StepIndex
    from rldskit.loaders.sources import StepSource

    index = StepIndex.load(ds.path, split, spec=ds.spec)
    return index, StepSource(index)


def _fixed_array(values: np.ndarray, typ: Any):
    """``(n, *shape)`` numpy values -> an Arrow array of ``typ`` (nested fixed-size lists)."""
    import pyarrow as pa

    types = []
    t = typ
    while pa.types.is_fixed_size_list(t):
        types.append(t)
        t = t.value_type
    flat = values.reshape(-1)
    arr = pa.array(flat.tolist() if flat.dtype == object else flat, type=t)
    for lt in reversed(types):
        arr = pa.FixedSizeListArray.from_arrays(arr, type=lt)
    return arr


def _value_array(values: list[Any], leaf: Any, typ: Any):
    import pyarrow as pa

    if getattr(leaf, "is_static", False):
        return _fixed_array(np.stack([np.asarray(v, dtype=leaf.np_dtype) for v in values]) if values
                            else np.zeros((0, *leaf.shape), dtype=leaf.np_dtype), typ)
    return pa.array([np.asarray(v).tolist() for v in values], type=typ)


def _record_batches(index: Any, source: Any, start: int, stop: int, schema: Any,
                    rows: int = ROW_GROUP_ROWS) -> Iterator[Any]:
    """Record batches of ``schema`` for global steps ``start..stop-1`` of ``index``'s split: low-dim
    columns from the in-RAM index, images/text (and any other feature) from one batched read."""
    import pyarrow as pa

    spec = index.spec
    leaves = spec.step_leaves
    fast = [p for p, lf in leaves.items() if isinstance(lf, (Image, Text))]
    slow = [p for p in leaves if p not in index.columns and p not in fast]
    ids = np.asarray([str(x) for x in index.episodes["episode_id"]], dtype=object)
    for a in range(start, stop, rows):
        g = np.arange(a, min(stop, a + rows), dtype=np.int64)
        e, t = index.locate(g)
        fields = source.read_fields(g, fast) if fast else [{} for _ in g]
        if slow:
            for d, more in zip(fields, source.read_fields(g, slow)):
                d.update(more)
        arrays = [pa.array(ids[e].tolist(), pa.string()), pa.array(e, pa.int64()), pa.array(t, pa.int64()),
                  pa.array(g, pa.int64())]
        for path, leaf in leaves.items():
            typ = schema.field(path).type
            if path in index.columns:
                arrays.append(_fixed_array(np.ascontiguousarray(index.columns[path][g]), typ))
            elif isinstance(leaf, Image):
                arrays.append(pa.array([{"bytes": d[path], "path": None} if d[path] else None for d in fields],
                                       type=typ))
            elif isinstance(leaf, Text):
                arrays.append(pa.array([d[path] for d in fields], type=typ))
            else:
                arrays.append(_value_array([d[path] for d in fields], leaf, typ))
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _auto_rows(index: Any) -> int:
    """Steps per parquet file so that a file holds about :data:`TARGET_FILE_BYTES`."""
    size = sum(os.path.getsize(f) for f in index.step_files if os.path.exists(f))
    per_step = max(size / max(index.num_steps, 1), 1.0)
    return max(ROW_GROUP_ROWS, int(TARGET_FILE_BYTES // per_step))


def _nonempty_splits(ds: Any) -> list[str]:
    return [s for s in ds.splits if ds.num_episodes(s) > 0]


def parquet_view(path: str | os.PathLike, out_dir: str | os.PathLike, *, split: str | None = None,
                 rows_per_file: int | None = None) -> list[Path]:
    """Write the steps of ``split`` (default: every non-empty split) of the dataset at ``path`` as
    ``out_dir/<split>-00000-of-000NN.parquet`` files of ``rows_per_file`` steps (default: about
    256 MB each, estimated from the step files' size), one row per step in global-step order (see
    the module docstring for the columns). Each file is written to a temp name and renamed; files of
    the same split left by an earlier run with another file count are removed. Returns the paths."""
    import pyarrow.parquet as pq

    ds = _open(path)
    if split is not None and split not in ds.splits:
        raise KeyError(f"{ds.path}: no split {split!r}; it has {', '.join(ds.splits)}")
    if rows_per_file is not None and (isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int)
                                      or rows_per_file < 1):
        raise ValueError(f"rows_per_file must be a positive integer, got {rows_per_file!r}")
    schema = _arrow_schema(ds.spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for s in [split] if split is not None else _nonempty_splits(ds):
        index, source = _load_index(ds, s)
        rows = rows_per_file or _auto_rows(index)
        n = index.num_steps
        count = max(1, math.ceil(n / rows))
        names = []
        for k in range(count):
            name = f"{s}-{k:05d}-of-{count:05d}.parquet"
            final, tmp = out / name, out / f".{name}.{os.getpid()}.tmp"
            try:
                with pq.ParquetWriter(tmp, schema, write_page_index=True) as w:
                    for batch in _record_batches(index, source, k * rows, min(n, (k + 1) * rows), schema):
                        w.write_batch(batch)
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            names.append(name)
            written.append(final)
        for old in out.glob(f"{_glob_escape(s)}-*-of-*.parquet"):
            if old.name not in names:
                old.unlink()
    return written


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def to_hf_dataset(path: str | os.PathLike, split: str = "train", *, cache_dir: str | os.PathLike | None = None,
                  in_memory: bool = False):
    """The steps of ``split`` as a ``datasets.Dataset`` (one row per step, the parquet view's columns,
    features from :func:`hf_features`: images decode to PIL images). The rows are written once to an
    Arrow file under ``cache_dir`` (default: ``datasets``' cache, ``<HF_DATASETS_CACHE>/rldskit``),
    named by a fingerprint of the dataset's files, and memory-mapped (``in_memory`` loads it)."""
    import datasets
    import pyarrow as pa

    ds = _open(path)
    if split not in ds.splits:
        raise KeyError(f"{ds.path}: no split {split!r}; it has {', '.join(ds.splits)}")
    features = hf_features(ds.spec)
    schema = features.arrow_schema
    root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "rldskit"
    root.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(ds.path, extra=(split, _VIEW_VERSION, str(schema)), rows_only=True)
    file = root / f"{ds.name}-{ds.version}-{split}-{fp[:16]}.arrow"
    if not file.is_file():
        index, source = _load_index(ds, split)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
                for batch in _record_batches(index, source, 0, index.num_steps, schema):
                    w.write_batch(batch)
            os.replace(tmp, file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    info = datasets.DatasetInfo(description=ds.spec.description, features=features)
    return datasets.Dataset.from_file(str(file), info=info, split=split, in_memory=in_memory)


# =========================================================================== dataset card


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x: Any) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)


def _vec(v: Any, limit: int = 8) -> str:
    """A compact rendering of a stats value (a number or a nested list)."""
    if v is None:
        return ""
    arr = np.asarray(v, dtype=object)
    if arr.ndim == 0:
        return _num(arr.item())
    flat = [_num(x) for x in arr.reshape(-1)[:limit]]
    more = ", …" if arr.size > limit else ""
    return "[" + ", ".join(flat) + more + "]"


def _shape_str(leaf: Any) -> str:
    dims = ["?" if d is None else str(d) for d in leaf.shape]
    return "scalar" if not dims else f"({dims[0]},)" if len(dims) == 1 else "(" + ", ".join(dims) + ")"


def _dtype_str(leaf: Any) -> str:
    if isinstance(leaf, Image):
        return f"image ({leaf.encoding}, uint8)"
    return "string" if isinstance(leaf, Text) else leaf.dtype


def _names_str(leaf: Any, limit: int = 12) -> str:
    names = getattr(leaf, "names", None)
    if not names:
        return ""
    return ", ".join(names[:limit]) + (", …" if len(names) > limit else "")


def _read_stats(ds: DatasetLayout) -> dict[str, dict[str, Any]] | None:
    """``stats.json`` as ``{feature: {"mean", "std", "min", "max", ...}}`` (also accepted under a
    top-level ``"features"`` or ``"stats"`` key), or ``None``. Unreadable files are ignored."""
    try:
        obj = ds.stats()
    except (OSError, ValueError):
        return None
    if isinstance(obj, dict):
        for key in ("features", "stats"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        return None
    out = {k: v for k, v in obj.items()
           if isinstance(v, dict) and any(s in v for s in ("mean", "std", "min", "max"))}
    return out or None


def _yaml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid double-quoted YAML scalar


def _size_category(n: int) -> str:
    for limit, label in ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                         (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")):
        if n < limit:
            return label
    return "n>1T" if n >= 10**12 else "1B<n<10B" if n < 10**10 else "10B<n<100B" if n < 10**11 else "100B<n<1T"


def _provenance(ds: Any) -> tuple[Counter, Counter, Counter, int, int]:
    """Counts over every episode: tags (once per episode), environment ids, control roles, the
    number of episodes and of terminal ones."""
    tags: Counter = Counter()
    envs: Counter = Counter()
    roles: Counter = Counter()
    n = terminal = 0
    for ep in ds.episodes():
        n += 1
        terminal += bool(ep.is_terminal)
        meta = ep.metadata
        raw = meta.get("tags")
        if raw is not None:
            tags.update({str(x) for x in np.asarray(raw, dtype=object).reshape(-1).tolist() if str(x)})
        if meta.get("environment_id"):
            envs[str(meta["environment_id"])] += 1
        if meta.get("control_role"):
            roles[str(meta["control_role"])] += 1
    return tags, envs, roles, n, terminal


def _conversion_line(ds: DatasetLayout) -> str | None:
    """What ``manifest.json`` says about the conversion, for the card: counts and the sources by
    the names the manifest records them under (never a local path; a manifest without ``roots``,
    whose inputs may carry absolute paths, gives the counts only). ``None`` without a manifest."""
    try:
        m = ds.manifest()
        counts = m["counts"]
        line = (f"Converted by rldskit from {int(counts['inputs'])} input episodes: {int(counts['written'])} written, "
                f"{int(counts['quarantined'])} quarantined (listed with their reasons in `{MANIFEST_FILE}`)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    roots = m.get("roots")
    if isinstance(roots, list) and roots and all(isinstance(r, dict) and "name" in r for r in roots):
        line += "; sources: " + ", ".join(
            f"`{_md(r['name'])}` ({r.get('inputs', '?')} inputs, sha256 `{str(r.get('sha256', ''))[:16]}`)" for r in roots)
    return line + "."


def dataset_card(path: str | os.PathLike, *, license: str | None = None, repo_id: str | None = None) -> str:  # noqa: A002
    """The Hub ``README.md`` of the dataset at ``path``: YAML front matter (``license``: the argument,
    else the spec's, else ``"other"``; ``task_categories: [robotics]``; tags; ``configs`` pointing
    ``datasets`` at ``parquet/<split>-*.parquet``), then the schema, counts, ``stats.json``
    statistics (when present), provenance and how to load it (``repo_id`` fills the snippets)."""
    ds = _open(path)
    spec = ds.spec
    lic = license or spec.license or "other"
    repo = repo_id or "<user>/<repo>"
    splits = _nonempty_splits(ds)
    steps = {s: ds.num_steps(s) for s in ds.splits}
    total_steps = sum(steps.values())
    tags, envs, roles, n_eps, n_term = _provenance(ds)

    y = ["---", f"license: {_yaml_str(lic)}", f"pretty_name: {_yaml_str(f'{ds.name} {ds.version}')}",
         "task_categories:", "- robotics", "tags:", "- rlds", "- rldskit", "- robotics",
         "size_categories:", f"- {_size_category(total_steps)}", "configs:", "- config_name: default",
         "  data_files:"]
    for s in splits:
        y += [f"  - split: {_yaml_str(s)}", f"    path: {_yaml_str(f'{PARQUET_DIR}/{s}-*.parquet')}"]
    y.append("---")

    md = ["", f"# {ds.name} {ds.version}", ""]
    if spec.description:
        md += [spec.description, ""]
    rate = f"{spec.fps:g} Hz" if spec.fps else "unspecified"
    md += [f"An [RLDS](https://github.com/google-research/rlds) robot-learning dataset written by rldskit. "
           f"Schema `{spec.id}`, nominal control rate {rate}, last-step convention `{spec.last_step}` "
           + ("(the last step's action and reward are not meaningful)." if spec.last_step == "rlds"
              else "(every step's action and reward are valid)."), ""]

    md += ["## Contents", "", "| split | episodes | steps |", "|---|---:|---:|"]
    md += [f"| {_md(s)} | {ds.num_episodes(s)} | {steps[s]} |" for s in ds.splits]
    md += [f"| **total** | {ds.num_episodes()} | {total_steps} |", "",
           "Files (the repo root is the TFDS dataset version folder):", "",
           f"- `{PARQUET_DIR}/`: one row per step (`episode_id`, `episode_index`, `step`, `global_step`, then every "
           "step feature below; images as `datasets.Image`), read by `datasets.load_dataset` and the dataset viewer.",
           f"- `dataset_info.json`, `features.json`, `rldskit_spec.json` and the episode shards "
           f"(`{'`, `'.join(ds.file_formats)}`): the TFDS RLDS dataset (one episode per record).",
           "- `episodes.parquet` and `steps/`: the step index and step-major ArrayRecord files used by "
           "rldskit's Grain loaders.", ""]

    md += ["## Schema", "", "Step features (column names of the parquet view and of `rldskit` episodes):", "",
           "| feature | dtype | shape | unit | names | description |", "|---|---|---|---|---|---|"]
    for p, leaf in spec.step_leaves.items():
        desc = leaf.description + (" (optional)" if getattr(leaf, "optional", False) else "")
        md.append(f"| `{_md(p)}` | {_md(_dtype_str(leaf))} | {_shape_str(leaf)} | {_md(leaf.unit or '')} | "
                  f"{_md(_names_str(leaf))} | {_md(desc)} |")
    if spec.metadata_leaves:
        md += ["", "Episode metadata:", "", "| field | dtype | shape | description |", "|---|---|---|---|"]
        for p, leaf in spec.metadata_leaves.items():
            md.append(f"| `{_md(p)}` | {_md(_dtype_str(leaf))} | {_shape_str(leaf)} | {_md(leaf.description)} |")
    md.append("")

    stats = _read_stats(ds)
    md += ["## Statistics", ""]
    if stats:
        md += [f"Per-feature statistics over all steps (from `{STATS_FILE}`):", "",
               "| feature | mean | std | min | max | count |", "|---|---|---|---|---|---:|"]
        for k, v in stats.items():
            md.append(f"| `{_md(k)}` | {_md(_vec(v.get('mean')))} | {_md(_vec(v.get('std')))} | "
                      f"{_md(_vec(v.get('min')))} | {_md(_vec(v.get('max')))} | {_md(v.get('count', ''))} |")
    else:
        md.append(f"No `{STATS_FILE}` was written for this dataset.")
    md.append("")

    md += ["## Provenance", "", f"{n_eps} episodes: {n_term} terminal, {n_eps - n_term} not terminal (truncated).", ""]
    conv = _conversion_line(ds)
    if conv:
        md += [conv, ""]
    if envs:
        md += ["Environments: " + ", ".join(f"`{_md(k)}` ({v})" for k, v in envs.most_common()), ""]
    if roles:
        md += ["Control roles: " + ", ".join(f"`{_md(k)}` ({v})" for k, v in roles.most_common()), ""]
    if tags:
        md += ["| tag | episodes |", "|---|---:|"]
        md += [f"| `{_md(k)}` | {v} |" for k, v in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))]
    else:
        md.append("No episode tags.")
    md.append("")

    first = splits[0] if splits else "train"
    md += ["## Load", "", "With rldskit (episodes, or Grain loaders over the step-major files):", "", "```python",
           "import rldskit", "from rldskit.hub import pull", "",
           f"path = pull({repo!r}, \"data/{ds.name}\")  # snapshot_download + verification",
           "ds = rldskit.open(path)",
           f"for episode in ds.episodes({first!r}):",
           "    episode.steps[\"action\"], episode.metadata[\"episode_id\"]",
           "loader = rldskit.loaders.windows(path, history=2, action_horizon=8, batch_size=32)",
           "```", "", "With `datasets` (one row per step):", "", "```python", "from datasets import load_dataset",
           "", f"steps = load_dataset({repo!r}, split={first!r})",
           "steps[0]  # images are PIL images, vectors lists", "```", ""]
    return "\n".join(y + md)


# =========================================================================== staging and push


def _dataset_files(version_dir: Path) -> list[str]:
    """Relative POSIX paths of the dataset's files to upload: everything but hidden files and
    folders (temp files, caches) and the names the card and parquet view take."""
    out = []
    for root, dirs, files in os.walk(version_dir):
        rel_root = Path(root).relative_to(version_dir)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (rel_root == Path(".") and d == PARQUET_DIR))
        for f in sorted(files):
            if f.startswith(".") or (rel_root == Path(".") and f == CARD_FILE):
                continue
            out.append((rel_root / f).as_posix())
    return out


#: files that do not change the step rows (the parquet view and Arrow cache ignore them)
_NOT_IN_ROWS = (STATS_FILE, MANIFEST_FILE)


def _fingerprint(version_dir: Path, extra: Sequence[Any] = (), *, rows_only: bool = False) -> str:
    """A digest of the dataset's file names, sizes and mtimes (and ``extra``): what decides whether
    a cached card, parquet view or Arrow file is still current."""
    h = hashlib.sha256()
    for rel in _dataset_files(version_dir):
        if rows_only and rel in _NOT_IN_ROWS:
            continue
        st = (version_dir / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps([str(x) for x in extra]).encode())
    return h.hexdigest()


def _staging_base(version_dir: Path, repo_id: str, revision: str | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", repo_id + (f"@{revision}" if revision else ""))
    base = version_dir.parent / _STAGING_DIR / f"{version_dir.name}--{slug}"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    key = hashlib.sha256(f"{version_dir.resolve()}|{slug}".encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / "rldskit-hub" / f"{version_dir.name}--{key}"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (a copy across file systems); kept as is when it
    already is one, or a finished copy (same size and mtime), so upload state stays valid."""
    if dst.exists():
        try:
            if os.path.samefile(src, dst):
                return
            s, d = src.stat(), dst.stat()
            if s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
                return
        except OSError:
            pass
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)


def _write_if_changed(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return
    from rldskit._io import atomic_write_bytes

    atomic_write_bytes(path, data, durable=False)


def stage(path: str | os.PathLike, staging: str | os.PathLike, *, repo_id: str | None = None,
          license: str | None = None, rows_per_file: int | None = None) -> dict[str, Any]:  # noqa: A002
    """Fill the folder ``staging`` with what :func:`push` uploads: hard links to the dataset's files,
    ``README.md`` and ``parquet/``. The card and parquet view are rebuilt only when the dataset's
    files (names, sizes, mtimes) or the options changed (state in ``<staging>.json``); files no longer
    in the dataset are removed. Returns ``{"folder", "files", "bytes", "parquet", "rebuilt"}``."""
    ds = _open(path)
    folder = Path(staging)
    folder.mkdir(parents=True, exist_ok=True)
    state_file = folder.with_name(folder.name + ".json")
    try:
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    except (OSError, ValueError):
        state = {}
    files = _dataset_files(ds.path)
    for rel in files:
        _link_or_copy(ds.path / rel, folder / rel)

    view_fp = _fingerprint(ds.path, extra=("view", _VIEW_VERSION, rows_per_file), rows_only=True)
    pq_dir = folder / PARQUET_DIR
    listed = [PARQUET_DIR + "/" + n for n in state.get("parquet_files", [])]
    rebuilt = []
    if state.get("view") != view_fp or not listed or not all((folder / p).is_file() for p in listed):
        written = parquet_view(ds.path, pq_dir, rows_per_file=rows_per_file)
        listed = [f"{PARQUET_DIR}/{p.name}" for p in written]
        state.update(view=view_fp, parquet_files=[p.name for p in written])
        rebuilt.append(PARQUET_DIR)
    card_fp = _fingerprint(ds.path, extra=("card", license, repo_id))
    if state.get("card") != card_fp or not (folder / CARD_FILE).is_file():
        _write_if_changed(folder / CARD_FILE, dataset_card(ds.path, license=license, repo_id=repo_id))
        state["card"] = card_fp
        rebuilt.append(CARD_FILE)
    from rldskit._io import atomic_write_bytes

    atomic_write_bytes(state_file, json.dumps(state, indent=1).encode(), durable=False)

    keep = set(files) | set(listed) | {CARD_FILE}
    for root, dirs, names in os.walk(folder, topdown=True):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = [d for d in dirs if not (rel_root == Path(".") and d == ".cache")]
        for n in names:
            rel = (rel_root / n).as_posix()
            if rel not in keep:
                (folder / rel).unlink()
    for root, dirs, names in os.walk(folder, topdown=False):  # drop emptied folders
        if root != str(folder) and not os.listdir(root) and ".cache" not in Path(root).relative_to(folder).parts:
            os.rmdir(root)
    uploaded = sorted(keep)
    return {"folder": folder, "files": uploaded, "bytes": sum((folder / f).stat().st_size for f in uploaded),
            "parquet": listed, "rebuilt": rebuilt}


def managed_path(rel: str) -> bool:
    """Whether the repo path ``rel`` belongs to the layout a push writes (see the module
    docstring, *Pruning*): only such files are deleted when the dataset no longer has them.
    ``README.md``, ``.gitattributes`` and anything in another folder or under another name are not."""
    return _MANAGED_RE.fullmatch(rel) is not None


def _stale(remote: Sequence[str], staged: Sequence[str]) -> list[str]:
    keep = set(staged)
    return sorted(f for f in remote if f not in keep and managed_path(f))


def push(path: str | os.PathLike, repo_id: str, *, private: bool = True, token: str | None = None, api: Any = None,
         revision: str | None = None, license: str | None = None, commit_message: str | None = None,  # noqa: A002
         staging_dir: str | os.PathLike | None = None, rows_per_file: int | None = None,
         prune: bool = True) -> dict[str, Any]:
    """Publish the dataset at ``path`` as the Hub dataset repo ``repo_id`` (see the module docstring):
    ``api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)``, stage the
    dataset's files, ``README.md`` (``license``: argument, else the spec's, else ``"other"``) and
    ``parquet/`` in a re-used staging folder (``staging_dir``, default beside the dataset), then upload
    it with ``api.upload_large_folder`` (or ``api.upload_folder`` on huggingface_hub 2.x, where it is the
    resumable uploader; ``commit_message`` applies there only). **Re-running after an interruption
    resumes the upload.** ``prune`` (default): files of rldskit's layout (:func:`managed_path`) that
    the repo (``revision``) holds but the dataset no longer has are deleted in the upload's commit
    (after the upload, in one commit, with ``upload_large_folder``); ``prune=False`` leaves them and
    lists them as ``"stale"``. ``api`` defaults to ``HfApi(token=...)``; ``token`` to ``$HF_TOKEN``,
    then the stored login. Raises ``DatasetError`` for a path that is not a dataset, ``ValueError``
    for a bad ``repo_id``, and :class:`HubError` (token scrubbed) when the Hub refuses or the upload
    fails. Returns ``{"repo_id", "url", "private", "revision", "method", "staging", "files", "bytes",
    "parquet", "commit", "deleted", "stale"}``."""
    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id):
        raise ValueError(f"repo id {repo_id!r} is not of the form 'owner/name'")
    ds = _open(path)
    _check_columns(ds.spec)
    if api is None:
        tok = _resolve_token(token, stored=True)
        api = _make_api(tok)
    else:
        tok = _resolve_token(token, stored=False)
    secrets = (tok,)
    # the repo first: a refused token or name fails before minutes of staging
    _call(f"create_repo {repo_id}", api.create_repo, repo_id, repo_type="dataset", private=private,
          exist_ok=True, secrets=secrets)
    if revision and hasattr(api, "create_branch"):
        _call(f"create_branch {revision} of {repo_id}", api.create_branch, repo_id, branch=revision,
              repo_type="dataset", exist_ok=True, secrets=secrets)
    if staging_dir is not None:
        folder = Path(staging_dir)
    else:
        folder = _staging_base(ds.path, repo_id, revision) / "upload"
    staged = stage(ds.path, folder, repo_id=repo_id, license=license, rows_per_file=rows_per_file)
    remote = _call(f"listing the files of {repo_id}", api.list_repo_files, repo_id, repo_type="dataset",
                   revision=revision, secrets=secrets)
    stale = _stale(list(remote or []), staged["files"])
    kwargs: dict[str, Any] = {"repo_id": repo_id, "folder_path": str(folder), "repo_type": "dataset"}
    if revision:
        kwargs["revision"] = revision
    deleted: list[str] = []
    if hasattr(api, "upload_large_folder"):
        method = "upload_large_folder"
        result = _call(f"upload to {repo_id}", api.upload_large_folder, private=private, secrets=secrets, **kwargs)
        if prune and stale:  # upload_large_folder cannot delete: one commit once the upload is complete
            from huggingface_hub import CommitOperationDelete

            result = _call(f"deleting {len(stale)} stale files from {repo_id}", api.create_commit, repo_id,
                           [CommitOperationDelete(path_in_repo=f) for f in stale], repo_type="dataset",
                           revision=revision, secrets=secrets,
                           commit_message=f"Remove {len(stale)} files no longer in {ds.name} {ds.version} (rldskit)")
            deleted = stale
    else:
        method = "upload_folder"
        msg = commit_message or f"Upload {ds.name} {ds.version} (rldskit)"
        if prune and stale:  # exact names: the deletions ride the upload's (first) commit
            kwargs["delete_patterns"] = [_glob_escape(f) for f in stale]
            deleted = stale
        result = _call(f"upload to {repo_id}", api.upload_folder, commit_message=msg, secrets=secrets, **kwargs)
    return {"repo_id": repo_id, "url": _HUB_URL.format(repo_id), "private": private, "revision": revision,
            "method": method, "staging": str(folder), "files": staged["files"], "bytes": staged["bytes"],
            "parquet": staged["parquet"], "commit": getattr(result, "oid", None), "deleted": deleted,
            "stale": [] if prune else stale}


# =========================================================================== pull


def _matches(rel: str, patterns: Sequence[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatch(rel, p) for p in patterns)


def _copy_local(src: Path, out: Path, patterns: Sequence[str] | None) -> None:
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise ValueError(f"{out}: the destination must not be inside the source folder {src}")
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_root = Path(root).relative_to(src)
        for f in files:
            if f.startswith("."):
                continue
            rel = (rel_root / f).as_posix()
            if not _matches(rel, patterns):
                continue
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            shutil.copy2(Path(root) / f, tmp)
            os.replace(tmp, dst)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(out: Path, partial: bool, source: str) -> Path:
    """Open the dataset under ``out`` with ``rldskit.open`` and check its shards against
    ``dataset_info.json`` and every file against the ``manifest.json`` checksums (files a ``partial``
    download left out are not errors). Returns the version folder."""
    ds = _open(out)
    problems = [f"{i.code}: {i.message} ({i.episode})" for i in ds.verify(decode=False)
                if not (partial and i.code == "SHARD_MISSING")]
    if ds.manifest_path.is_file():
        try:
            outputs = ds.manifest().get("outputs", [])
        except (OSError, ValueError, AttributeError):
            outputs = []
            problems.append(f"{MANIFEST_FILE} is not readable JSON")
        for o in outputs if isinstance(outputs, list) else []:
            if not isinstance(o, dict) or "file" not in o or "sha256" not in o:
                continue
            f = ds.path / o["file"]
            if not f.is_file():
                if not partial:
                    problems.append(f"{o['file']}: missing")
            elif _sha256(f) != o["sha256"]:
                problems.append(f"{o['file']}: sha256 differs from {MANIFEST_FILE}")
    if problems:
        raise HubError(f"{source}: the downloaded dataset in {ds.path} does not verify: " + "; ".join(problems[:5])
                       + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return ds.path


def pull(repo_id: str, out: str | os.PathLike, *, revision: str | None = None, token: str | None = None,
         allow_patterns: Sequence[str] | str | None = None, snapshot: Callable[..., Any] | None = None) -> Path:
    """Download the Hub dataset repo ``repo_id`` into ``out`` with ``snapshot(repo_id=..., repo_type=
    "dataset", local_dir=out, revision=..., allow_patterns=..., token=...)`` (default
    ``huggingface_hub.snapshot_download``; a re-run resumes and skips complete files). When
    ``repo_id`` is an existing local folder (a pushed repo's snapshot, a staging folder or a dataset
    folder) its files are copied instead. Then the dataset is opened with ``rldskit.open`` and verified
    (:class:`HubError` when it does not). Returns the dataset version folder (``out`` for a pushed
    repo), or ``out`` when ``allow_patterns`` left ``dataset_info.json`` out."""
    out = Path(out)
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else (list(allow_patterns) if allow_patterns
                                                                          else None)
    local = Path(os.path.expanduser(str(repo_id)))
    if local.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        _copy_local(local, out, patterns)
        source = str(local)
    else:
        rid = str(repo_id)
        if rid.startswith((".", "/", "~")) or rid.count("/") > 1 or (os.sep != "/" and os.sep in rid):
            raise ValueError(f"{repo_id}: no such local folder")
        if not _REPO_ID_RE.match(rid):
            raise ValueError(f"{repo_id!r} is neither a local folder nor a Hub dataset id ('owner/name')")
        if snapshot is None:
            tok = _resolve_token(token, stored=True)
            snapshot = _default_snapshot()
        else:
            tok = _resolve_token(token, stored=False)
        kwargs: dict[str, Any] = {"repo_id": repo_id, "repo_type": "dataset", "local_dir": str(out)}
        if revision:
            kwargs["revision"] = revision
        if patterns is not None:
            kwargs["allow_patterns"] = patterns
        if tok:
            kwargs["token"] = tok
        out.mkdir(parents=True, exist_ok=True)
        _call(f"download of {repo_id}", snapshot, secrets=(tok,), **kwargs)
        source = repo_id
    from rldskit.formats.tfds_dir import DATASET_INFO_FILE, is_dataset_dir

    if is_dataset_dir(out):
        return _verify(out, partial=patterns is not None, source=source)
    if patterns is None:
        from rldskit.formats.tfds_dir import DatasetError

        raise DatasetError(f"{source}: holds no {DATASET_INFO_FILE}: not an RLDS dataset repo")
    return out


# =========================================================================== CLI


def _cli_fail(code: int, msg: str) -> int:
    print(f"rldskit: error: {_scrub(msg, (os.environ.get('HF_TOKEN'),))}", file=sys.stderr)
    return code


def _cmd_push(args: argparse.Namespace) -> int:
    res = _cli_call(lambda: push(args.path, args.repo, private=not args.public, license=args.license,
                                 revision=args.revision, commit_message=args.message, staging_dir=args.staging,
                                 rows_per_file=args.rows_per_file, prune=args.prune))
    if isinstance(res, int):
        return res
    kind = "private" if res["private"] else "public"
    print(f"pushed {len(res['files'])} files ({res['bytes'] / 1e6:.1f} MB) to {res['url']} ({kind}, "
          f"{res['method']}; staging {res['staging']})")
    if res["deleted"]:
        print(f"deleted {len(res['deleted'])} files no longer in the dataset: " + ", ".join(res["deleted"][:5])
              + (", ..." if len(res["deleted"]) > 5 else ""))
    if res["stale"]:
        print(f"{len(res['stale'])} files no longer in the dataset were left in the repo (--no-prune): "
              + ", ".join(res["stale"][:5]) + (", ..." if len(res["stale"]) > 5 else ""))
    return 0


def _cli_call(fn: Callable[[], Any]) -> Any:
    """``fn()``, or the CLI exit code of what it raised (1: the transfer failed, re-runnable; 2:
    bad input or missing extras), with the message on stderr."""
    from rldskit.spec import SpecError

    try:
        return fn()
    except HubError as e:
        return _cli_fail(1, f"{e} (re-run the same command to resume)")
    except ImportError as e:
        return _cli_fail(2, f"{e}; install the Hub extras: pip install 'rldskit[hub]'")
    except (SpecError, ValueError, KeyError) as e:
        return _cli_fail(2, str(e))
    except OSError as e:
        return _cli_fail(1, f"{type(e).__name__}: {e}")


def _cmd_pull(args: argparse.Namespace) -> int:
    got = _cli_call(lambda: pull(args.repo, args.out, revision=args.revision, allow_patterns=args.include))
    if isinstance(got, int):
        return got
    print(f"pulled {args.repo} into {got}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``push`` and ``pull`` to an ``argparse`` subparsers object (``set_defaults(func=...)``;
    ``func(args)`` returns the exit code: 0 ok, 1 upload/download failure, 2 usage)."""
    p = subparsers.add_parser(
        "push", help="publish a converted dataset as a Hugging Face dataset repo (card, parquet view, TFDS files); "
                     "private by default; re-run to resume an interrupted upload",
        description="Upload a converted dataset version folder to a Hub dataset repo. The token comes from "
                    "HF_TOKEN or `hf auth login`. Re-running the same command resumes an interrupted upload. "
                    "The repo mirrors the dataset: files of rldskit's layout that an earlier push uploaded and the "
                    "dataset no longer has (old shards, parquet view files, stats.json) are deleted in the upload's "
                    "commit, since stale shards or parquet files would make readers see wrong or duplicated steps; "
                    "README.md, .gitattributes and any other file committed on the Hub are never deleted.")
    p.add_argument("path", help="dataset version folder (<data_dir>/<name>/<version>) or a folder above one")
    p.add_argument("--repo", required=True, metavar="ID", help="Hub dataset repo id, owner/name")
    p.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    p.add_argument("--license", default=None, metavar="L", help="license id for the card (default: the spec's, else 'other')")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--message", default=None, help="commit message (huggingface_hub 2.x upload_folder only)")
    p.add_argument("--staging", default=None, metavar="DIR", help="staging folder (default: beside the dataset)")
    p.add_argument("--rows-per-file", type=int, default=None, metavar="N", help="steps per parquet file")
    p.add_argument("--no-prune", dest="prune", action="store_false",
                   help="keep files of rldskit's layout that the dataset no longer has (default: delete them in the "
                        "upload's commit; README.md and files rldskit does not write are never deleted)")
    p.set_defaults(func=_cmd_push)

    q = subparsers.add_parser(
        "pull", help="download a Hub dataset repo (or copy a local folder) and verify it opens",
        description="snapshot_download a Hub dataset repo into DIR (re-run to resume), then open and verify it.")
    q.add_argument("repo", help="Hub dataset repo id (owner/name) or a local folder")
    q.add_argument("--out", required=True, metavar="DIR", help="destination folder")
    q.add_argument("--revision", default=None, help="branch, tag or commit")
    q.add_argument("--include", action="append", default=None, metavar="PATTERN",
                   help="only files matching this glob (repeatable); verification then skips absent files")
    q.set_defaults(func=_cmd_pull)
