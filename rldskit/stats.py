"""Dataset statistics from ``episodes.parquet``, computed with polars, written as ``stats.json``.

:func:`dataset_stats` reads the step index the converter writes beside a dataset's shards (one
row per episode; every low-dimensional step feature a list column with one value per step) once,
through the dataset layout's one reader (:meth:`~rldskit.formats.tfds_dir.DatasetLayout.index_table`,
a pyarrow table handed to polars with ``polars.from_arrow``), explodes the list columns to one row per step and aggregates them in a few
vectorised queries run together (no Python loop over episodes or steps for the numbers):

* **Per step feature** (keys are the flat step paths, values shaped like the feature: a number for
  a scalar, a list for a vector, nested lists beyond):

  - float features: ``count`` (steps considered), ``mean``, ``std`` (population, as
    :func:`rldskit.loaders.compute_stats`), ``min``, ``max`` and the quantiles ``q01`` ``q10``
    ``q50`` ``q90`` ``q99``. Quantiles are **exact** over all steps, with **linear
    interpolation** between the two nearest order statistics (numpy's default
    ``np.quantile(method="linear")``; agreement to the last bit or two of the interpolation).
    NaN and +-inf are left out of every statistic and counted per element in ``nan`` and
    ``inf``. An element with no finite value gets ``mean`` 0, ``std`` 1, ``min``/``max`` 0 (what
    ``compute_stats`` gives an empty feature, so normalisation stays defined) and null quantiles.
  - integer and bool features (flags, ``*_present`` masks): ``count``, ``min``, ``max``, ``mean``
    (bools as 0/1, so the mean is the fraction of True).
  - an optional feature is summarised over its present steps only (its ``<name>_present`` mask);
    ``present_fraction`` says how many steps that is.

* **``_dataset``** (a dict, like every top-level value, so the loaders' :func:`load_stats`
  accepts the file; :class:`~rldskit.loaders.Normalizer` only reads the features it normalises):
  episodes and steps in all and per split; the episode length distribution (min, mean, max,
  quantiles, a histogram); the achieved control rate per episode from the primary clock
  (``rate_hz`` = intervals / (last - first timestamp), and the median step interval), summarised
  over episodes and compared with the spec's ``rate_hz`` range; the skew of every other timestamp
  stream against the primary clock (``stream - clock`` per step: median, p99 and max of its
  absolute value, and its mean); and breakdowns ``by`` episode metadata (``"tag"``: each of an
  episode's ``tags``; any metadata field such as ``control_role`` or ``environment_id``; or an
  ``episodes.parquet`` column such as ``split``, ``terminal``, ``source``): episodes, steps and
  the mean action per value. Metadata lives in the episode shards, so a metadata breakdown reads
  one record per episode (each shard opened once); ``by=()`` reads nothing but the parquet file.

:func:`write_stats` writes it to ``<dataset>/stats.json`` atomically (NaN and inf become null).
:func:`format_table` renders it for a terminal. :func:`register_cli` adds ``rldskit stats``.

Errors are :class:`StatsError` (a missing or unreadable dataset or ``episodes.parquet``; the
message names the file) and its subclass :class:`EmptyDatasetError` (the selection holds no
steps); polars' own exceptions never escape.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit.formats.step_index import EPISODE_ROW_COLUMNS
from rldskit.formats.tfds_dir import STATS_FILE, DatasetLayout  # noqa: F401  (STATS_FILE: re-exported)

__all__ = ["dataset_stats", "write_stats", "format_table", "register_cli", "cmd_stats", "StatsError",
           "EmptyDatasetError", "QUANTILES", "QUANTILE_METHOD", "DATASET_KEY", "DEFAULT_BY"]

#: quantiles reported per float feature (keys ``q01``, ``q10``, ``q50``, ``q90``, ``q99``)
QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
#: how quantiles between two order statistics are computed (numpy's and polars' ``"linear"``)
QUANTILE_METHOD = "linear"
#: top-level key of the dataset-level section of ``stats.json``
DATASET_KEY = "_dataset"
#: default breakdowns; skipped quietly when the spec has no such metadata (foreign datasets)
DEFAULT_BY = ("tag", "control_role")
#: episodes.parquet columns describing the episode (the step index's own)
_ROW_COLUMNS = EPISODE_ROW_COLUMNS
_HIST_BINS = 10
_META_BATCH = 256  # episode records read per call when decoding metadata


class StatsError(ValueError):
    """The dataset or its ``episodes.parquet`` is missing or unreadable (the message names the file)."""


class EmptyDatasetError(StatsError):
    """The dataset (or the chosen split) holds no steps."""


# =========================================================================== helpers


def _qkey(q: float) -> str:
    pct = q * 100
    return f"q{int(round(pct)):02d}" if abs(pct - round(pct)) < 1e-9 else f"q{pct:g}"


def _num(v: Any) -> Any:
    """A JSON-clean Python number: numpy scalars unwrapped, NaN/inf -> None."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    return _num(obj)


def _shaped(values: Sequence[Any], shape: tuple[int, ...]) -> Any:
    """Per-element values (C order) as a (nested) list shaped like the feature, a bare value for ()."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = [_num(v) for v in values]
    return arr.reshape(shape).tolist()


def _summary(x: np.ndarray, quantiles: Sequence[float]) -> dict[str, Any]:
    """min/mean/max/quantiles of a small per-episode vector (finite values only)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"count": 0}
    out: dict[str, Any] = {"count": int(len(x)), "min": float(x.min()), "mean": float(x.mean()),
                           "max": float(x.max())}
    for q, v in zip(quantiles, np.quantile(x, list(quantiles), method=QUANTILE_METHOD)):
        out[_qkey(q)] = float(v)
    return out


def _polars():
    try:
        import polars as pl
    except ImportError:  # pragma: no cover - polars is a dependency of the stats extra
        raise StatsError("rldskit stats needs polars: pip install polars") from None
    return pl


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _polars_errors(pl) -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [pl.exceptions.PolarsError, OSError]
    panic = getattr(pl.exceptions, "PanicException", None)
    if isinstance(panic, type):
        errs.append(panic)
    return tuple(errs)


# =========================================================================== the dataset


def _open(path: str | Path):
    """``(DatasetDir, episodes.parquet path)`` or :class:`StatsError`."""
    from rldskit.formats.tfds_dir import DatasetError, open_dataset
    from rldskit.spec import SpecError

    def missing(ds: DatasetLayout) -> StatsError:
        return StatsError(f"{ds.index_path}: missing; statistics are computed from the step "
                          "index rldskit convert writes beside the shards (convert this dataset with rldskit first)")

    try:
        ds = open_dataset(path)
    except SpecError as e:  # a foreign TFDS dataset (no rldskit_spec.json) has no step index either
        try:
            other = open_dataset(path, last_step="valid")
        except (DatasetError, SpecError, OSError):
            raise StatsError(str(e)) from None
        if not other.has_index:
            raise missing(other) from None
        raise StatsError(str(e)) from None
    except DatasetError as e:
        raise StatsError(str(e)) from None
    except OSError as e:
        raise StatsError(f"{path}: cannot read: {e}") from None
    if not ds.has_index:
        raise missing(ds)
    return ds, ds.index_path


class _Feature:
    """One low-dimensional step column and how to aggregate it."""

    def __init__(self, path: str, leaf: Any, present: str | None, storage: tuple[int, ...]):
        self.path, self.leaf, self.present = path, leaf, present
        self.shape = tuple(int(d) for d in leaf.shape)
        self.kind = "float" if leaf.dtype.startswith("float") else "bool" if leaf.dtype == "bool" else "int"
        # how each element (C order of the feature's shape) is reached in the stored value: the
        # converter flattens n-d features to one fixed-size list; nested lists work too
        size = int(np.prod(self.shape)) if self.shape else 1
        self.elements = [tuple(int(i) for i in np.unravel_index(j, storage)) if storage else () for j in range(size)]
        self.aliases: list[str] = []


def _storage_shape(dtype: Any) -> tuple[int, ...] | None:
    """The per-step shape of a ``List(...)`` column's values (``()`` for scalars), or None."""
    pl = _polars()
    if not isinstance(dtype, pl.List):
        return None
    inner = dtype.inner
    if isinstance(inner, pl.Array):
        return tuple(int(d) for d in inner.shape)
    return None if isinstance(inner, (pl.List, pl.Struct)) else ()


def _features(spec: Any, schema: Mapping[str, Any], index_file: Path) -> list[_Feature]:
    from rldskit.spec import PRESENT_SUFFIX, Image, Text

    out = []
    for name, dtype in schema.items():
        if name in _ROW_COLUMNS or name not in spec.step_leaves:
            continue
        leaf = spec.step_leaves[name]
        if isinstance(leaf, (Image, Text)) or leaf.dtype == "string" or not leaf.is_static:
            continue
        storage = _storage_shape(dtype)
        size = int(np.prod(leaf.shape)) if leaf.shape else 1
        if storage is None or (int(np.prod(storage)) if storage else 1) != size:
            raise StatsError(f"{index_file}: column {name!r} is {dtype}; expected a list of one {list(leaf.shape)} "
                             f"{leaf.dtype} value per step")
        present = name + PRESENT_SUFFIX if getattr(leaf, "optional", False) and name + PRESENT_SUFFIX in schema else None
        out.append(_Feature(name, leaf, present, storage))
    return out


def _read(index: Any, index_file: Path, split: str | None, columns: list[str]):
    """``columns`` of the rows of ``split`` (all rows when ``None``) of the step index ``index``
    (the polars frame of :func:`_load_index`)."""
    pl = _polars()
    errors = _polars_errors(pl)
    try:
        lf = index.lazy()
        if split is not None:
            lf = lf.filter(pl.col("split") == split)
        df = lf.select(columns).collect()
        if split is not None and df.height == 0:
            splits = sorted(index.select(pl.col("split").unique()).get_column("split").drop_nulls().to_list())
            raise EmptyDatasetError(f"{index_file}: split {split!r} has no episodes "
                                    f"(the dataset has {', '.join(splits) if splits else 'none'})")
    except errors as e:
        raise StatsError(f"{index_file}: not a readable episodes.parquet: {_first_line(e)}") from None
    return df


def _load_index(ds: Any, index_file: Path):
    """The whole step index of ``ds`` as a polars DataFrame: the layout's one pyarrow table
    (:meth:`~rldskit.formats.tfds_dir.DatasetLayout.index_table`) through ``polars.from_arrow``."""
    import pyarrow as pa

    pl = _polars()
    try:
        table = ds.index_table()
    except (OSError, ValueError, pa.ArrowException) as e:
        raise StatsError(f"{index_file}: not a readable parquet file: {_first_line(e)}") from None
    try:
        frame = pl.from_arrow(table)
    except (*_polars_errors(pl), TypeError, ValueError, pa.ArrowException) as e:
        raise StatsError(f"{index_file}: not a readable parquet file: {_first_line(e)}") from None
    if not isinstance(frame, pl.DataFrame):  # pragma: no cover - from_arrow of a Table is a DataFrame
        raise StatsError(f"{index_file}: not a readable parquet file: not a table")
    return frame


# =========================================================================== the queries


def _step_query(df, feats: list[_Feature], quantiles: Sequence[float], clock: str | None, streams: list[str]):
    """One row: every per-element statistic and the timestamp skews, from the exploded columns."""
    pl = _polars()
    exploded, aggs = [], []
    k = 0
    by_path = {f.path: f for f in feats}
    for f in feats:
        base = pl.col(f.path).explode()
        f.aliases = []
        for idx in f.elements:
            e = base
            for i in idx:
                e = e.arr.get(i)
            alias = f"_e{k}"
            k += 1
            if f.kind == "float":
                e = e.cast(pl.Float64)
            elif f.kind == "bool":
                e = e.cast(pl.UInt8)
            exploded.append(e.alias(alias))
            f.aliases.append(alias)
    qs = list(quantiles)
    for f in feats:
        mask = pl.col(by_path[f.present].aliases[0]).cast(pl.Boolean) if f.present in by_path else None
        if mask is not None:
            aggs.append(mask.sum().alias(f"{f.aliases[0]}.present"))
        for alias in f.aliases:
            x = pl.col(alias)
            if f.kind == "float":
                ok = x.is_finite() if mask is None else (x.is_finite() & mask)
                v = x.filter(ok)
                nan, inf = (x.is_nan(), x.is_infinite()) if mask is None else (x.is_nan() & mask, x.is_infinite() & mask)
                aggs += [v.count().alias(f"{alias}.n"), v.mean().alias(f"{alias}.mean"),
                         v.std(ddof=0).alias(f"{alias}.std"), v.min().alias(f"{alias}.min"),
                         v.max().alias(f"{alias}.max"), nan.sum().alias(f"{alias}.nan"),
                         inf.sum().alias(f"{alias}.inf")]
                if qs:
                    aggs.append(v.quantile(qs, QUANTILE_METHOD).alias(f"{alias}.q"))
            else:
                v = x if mask is None else x.filter(mask)
                aggs += [v.count().alias(f"{alias}.n"), v.mean().alias(f"{alias}.mean"),
                         v.min().alias(f"{alias}.min"), v.max().alias(f"{alias}.max")]
    if clock is not None:
        c = pl.col(by_path[clock].aliases[0])
        for s in streams:
            d = pl.col(by_path[s].aliases[0]) - c
            d = d.filter(d.is_finite())
            aggs += [d.count().alias(f"skew:{s}.n"), d.mean().alias(f"skew:{s}.mean"),
                     d.abs().max().alias(f"skew:{s}.max"),
                     d.abs().quantile([0.5, 0.99], QUANTILE_METHOD).alias(f"skew:{s}.q")]
    if not aggs:
        aggs = [pl.len().alias("_n")]
    return df.lazy().select(exploded or [pl.lit(0).alias("_none")]).select(aggs)


def _episode_query(df, clock: str | None):
    pl = _polars()
    cols = [pl.col("split"), pl.col("length")]
    if clock is not None:
        c = pl.col(clock)
        cols += [(c.list.last() - c.list.first()).cast(pl.Float64).alias("_duration"),
                 c.list.diff().list.median().cast(pl.Float64).alias("_median_dt")]
    return df.lazy().select(cols)


def _action_sums_query(df, feats: list[_Feature]):
    """Per episode (row order): the sum and count of the finite values of each action element."""
    pl = _polars()
    acts = [f for f in feats if f.kind == "float" and (f.path == "action" or f.path.startswith("action/"))]
    if not acts:
        return None, []
    cols = list(dict.fromkeys([f.path for f in acts] + [f.present for f in acts if f.present]))
    exprs = [pl.col("_ep")]
    aggs = []
    for f in acts:
        for idx, alias in zip(f.elements, f.aliases):
            e = pl.col(f.path)
            for i in idx:
                e = e.arr.get(i)
            exprs.append(e.cast(pl.Float64).alias(alias))
        if f.present:
            exprs.append(pl.col(f.present).alias(f"{f.aliases[0]}.p"))
    for f in acts:
        for alias in f.aliases:
            x = pl.col(alias)
            ok = x.is_finite() if not f.present else (x.is_finite() & pl.col(f"{f.aliases[0]}.p"))
            aggs += [x.filter(ok).sum().alias(f"{alias}.sum"), x.filter(ok).count().alias(f"{alias}.cnt")]
    q = (df.lazy().with_row_index("_ep").select(["_ep", *cols]).explode(cols).select(exprs)
         .group_by("_ep").agg(aggs).sort("_ep"))
    return q, acts


# =========================================================================== metadata


def _read_metadata(ds: Any, df, keys: set[str]) -> list[dict[str, Any]]:
    """The spec's episode metadata ``keys`` of every row of ``df``: one record read per episode,
    each shard opened once (ArrayRecord when the dataset has it, else TFRecord)."""
    from rldskit.formats.arrayrecord import ArrayRecordCorruption, ArrayRecordShardReader
    from rldskit.formats.tfexample import BYTES, ExampleDecodeError, decode_features, typed_column
    from rldskit.formats.tfrecord import index_tfrecord, read_record_at
    from rldskit.spec import PRESENT_SUFFIX, Text

    for c in ("shard", "shard_record"):
        if c not in df.columns:
            raise StatsError(f"{ds.index_path}: no {c!r} column, so episode metadata cannot be found")
    spec = ds.spec
    leaves = {k: spec.metadata_leaves[k] for k in keys}
    for k in list(leaves):
        if getattr(leaves[k], "optional", False) and k + PRESENT_SUFFIX in spec.metadata_leaves:
            leaves[k + PRESENT_SUFFIX] = spec.metadata_leaves[k + PRESENT_SUFFIX]
    shards = df.get_column("shard").to_list()
    records = df.get_column("shard_record").to_list()
    primary = ds.file_formats[0]
    use_ar = "array_record" in ds.file_formats
    out: list[dict[str, Any] | None] = [None] * len(shards)
    groups: dict[str, list[int]] = {}
    for row, shard in enumerate(shards):
        groups.setdefault(shard, []).append(row)

    def decode(data: bytes, where: str) -> dict[str, Any]:
        try:
            feats = decode_features(data)
            meta: dict[str, Any] = {}
            for k, leaf in leaves.items():
                key = "episode_metadata/" + k
                if key not in feats:
                    raise ExampleDecodeError(f"feature {key!r} is absent (declared by {spec.id})")
                kind, values = feats[key]
                if isinstance(leaf, Text):
                    meta[k] = typed_column(kind, values, leaf, 1, key)[0]
                elif leaf.dtype == "string":
                    if kind != BYTES:
                        raise ExampleDecodeError(f"feature {key!r}: expected bytes_list")
                    meta[k] = [v.decode(errors="replace") for v in values]
                else:
                    v = typed_column(kind, values, leaf, 1, key)[0]
                    meta[k] = v.item() if v.shape == () else v.tolist()
        except ExampleDecodeError as e:
            raise StatsError(f"{where}: episode record is not an episode of {spec.id}: {e}") from None
        for k in keys:
            if k + PRESENT_SUFFIX in meta and not meta[k + PRESENT_SUFFIX]:
                meta[k] = None
        return meta

    for shard, rows in groups.items():
        try:
            if use_ar:
                path = ds.path / shard.replace(f".{primary}-", ".array_record-")
                with ArrayRecordShardReader(path) as reader:
                    for start in range(0, len(rows), _META_BATCH):
                        chunk = rows[start:start + _META_BATCH]
                        for row, data in zip(chunk, reader.read([int(records[r]) for r in chunk])):
                            out[row] = decode(data, f"{path} record {records[row]}")
            else:
                path = ds.path / shard
                offsets = index_tfrecord(path)
                for row in rows:
                    out[row] = decode(read_record_at(path, offsets[int(records[row])][0]),
                                      f"{path} record {records[row]}")
        except StatsError:
            raise
        except (ArrayRecordCorruption, OSError, IndexError, ValueError) as e:
            raise StatsError(f"{path}: cannot read episode metadata: {e}") from None
    return out  # type: ignore[return-value]


def _breakdowns(ds: Any, df, by: Sequence[str], feats: list[_Feature], sums_df, acts: list[_Feature],
                notes: list[str]) -> dict[str, Any]:
    pl = _polars()
    spec = ds.spec
    meta_keys: set[str] = set()
    plan: list[tuple[str, str]] = []  # (by key, source: "tag" | "meta" | "row")
    for b in by:
        if b in ("tag", "tags") and "tags" in spec.metadata_leaves:
            plan.append((b, "tag"))
            meta_keys.add("tags")
        elif b in spec.metadata_leaves:
            plan.append((b, "meta"))
            meta_keys.add(b)
        elif b in df.columns and b in _ROW_COLUMNS:
            plan.append((b, "row"))
        elif b in DEFAULT_BY:
            notes.append(f"no breakdown by {b!r}: {spec.id} has no such episode metadata")
        else:
            raise StatsError(f"cannot break down by {b!r}: not 'tag', an episode metadata field of {spec.id} "
                             f"({', '.join(spec.metadata_leaves)}) or an episodes.parquet column "
                             f"({', '.join(c for c in _ROW_COLUMNS if c in df.columns)})")
    if not plan:
        return {}
    meta = _read_metadata(ds, df, meta_keys) if meta_keys else None
    per_ep = pl.DataFrame({"_ep": np.arange(df.height, dtype=np.int64),
                           "_length": df.get_column("length").cast(pl.Int64)})
    if sums_df is not None:
        per_ep = per_ep.join(sums_df.with_columns(pl.col("_ep").cast(pl.Int64)), on="_ep", how="left")
    sum_aggs = []
    for f in acts:
        for alias in f.aliases:
            sum_aggs += [pl.col(f"{alias}.sum").sum().alias(f"{alias}.sum"),
                         pl.col(f"{alias}.cnt").sum().alias(f"{alias}.cnt")]
    out: dict[str, Any] = {}
    for b, source in plan:
        if source == "row":
            values = df.get_column(b).cast(pl.String).fill_null("(null)").to_list()
        elif source == "tag":
            values = [list(m["tags"]) if m["tags"] is not None else [] for m in meta]  # type: ignore[union-attr]
        else:
            values = ["(absent)" if m[b] is None else str(m[b]) for m in meta]  # type: ignore[index]
        key_df = pl.DataFrame({"_ep": np.arange(df.height, dtype=np.int64),
                               "_value": pl.Series(values, dtype=pl.List(pl.String) if source == "tag" else pl.String)})
        if source == "tag":
            key_df = key_df.explode("_value").drop_nulls("_value").unique(["_ep", "_value"])
        grouped = (key_df.join(per_ep, on="_ep").group_by("_value")
                   .agg([pl.len().alias("episodes"), pl.col("_length").sum().alias("steps"), *sum_aggs])
                   .sort("_value"))
        section: dict[str, Any] = {}
        for row in grouped.iter_rows(named=True):
            entry: dict[str, Any] = {"episodes": int(row["episodes"]), "steps": int(row["steps"])}
            if acts:
                entry["mean"] = {}
                for f in acts:
                    vals = [row[f"{a}.sum"] / row[f"{a}.cnt"] if row[f"{a}.cnt"] else None for a in f.aliases]
                    entry["mean"][f.path] = _shaped(vals, f.shape)
            section[row["_value"]] = entry
        out[b] = section
    return out


# =========================================================================== the statistics


def _compute(path: str | Path, *, split: str | None, by: Sequence[str],
             quantiles: Sequence[float]) -> tuple[Path, dict[str, Any]]:
    pl = _polars()
    errors = _polars_errors(pl)
    quantiles = tuple(float(q) for q in quantiles)
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must be in [0, 1], got {list(quantiles)}")
    if isinstance(by, str):
        by = (by,)
    ds, index_file = _open(path)
    spec = ds.spec
    index = _load_index(ds, index_file)
    schema = dict(index.schema)
    missing = [c for c in ("split", "length") if c not in schema]
    if missing:
        raise StatsError(f"{index_file}: columns {missing} are missing (not an rldskit step index?)")
    feats = _features(spec, schema, index_file)
    row_cols = [c for c in _ROW_COLUMNS if c in schema]
    df = _read(index, index_file, split, row_cols + [f.path for f in feats])

    try:
        df = df.with_columns(pl.col("length").cast(pl.Int64))
        if df.height:
            bad = df.select([(pl.col(f.path).list.len() != pl.col("length")).any().alias(f.path) for f in feats]
                            + [(pl.col("length") < 0).any().alias("_negative")]).row(0, named=True)
            if bad.pop("_negative"):
                raise StatsError(f"{index_file}: negative episode lengths")
            wrong = [k for k, v in bad.items() if v]
            if wrong:
                raise StatsError(f"{index_file}: columns {wrong} do not hold one value per step of each episode "
                                 "(list lengths differ from 'length')")
        num_steps = int(df.get_column("length").sum()) if df.height else 0
        if num_steps == 0:
            what = f"split {split!r}" if split is not None else "the dataset"
            raise EmptyDatasetError(f"{index_file}: {what} has no steps ({df.height} episodes); nothing to summarise")

        by_path = {f.path: f for f in feats}
        clock = spec.clock if spec.clock in by_path and by_path[spec.clock].kind == "float" else None
        notes: list[str] = []
        if clock is not None and by_path[clock].present is not None:
            notes.append(f"the primary clock {clock} is optional: rate and skew are not computed")
            clock = None
        streams = [p for p in spec.timestamp_paths if p != clock and p in by_path and by_path[p].kind == "float"
                   and by_path[p].present is None] if clock else []

        queries = [_step_query(df, feats, quantiles, clock, streams), _episode_query(df, clock)]
        sums_q, acts = (_action_sums_query(df, feats) if by else (None, []))
        if sums_q is not None:
            queries.append(sums_q)
        results = pl.collect_all(queries)
        step_row = results[0].row(0, named=True)
        eps = results[1]
        sums_df = results[2] if sums_q is not None else None

        out: dict[str, Any] = {}
        for f in feats:
            n_steps = int(step_row[f"{f.aliases[0]}.present"]) if f.present in by_path else num_steps
            if f.kind == "float":
                stat: dict[str, Any] = {"count": n_steps}
                n = [int(step_row[f"{a}.n"]) for a in f.aliases]
                empty = [c == 0 for c in n]
                stat["mean"] = _shaped([0.0 if e else step_row[f"{a}.mean"] for a, e in zip(f.aliases, empty)], f.shape)
                stat["std"] = _shaped([1.0 if e else step_row[f"{a}.std"] for a, e in zip(f.aliases, empty)], f.shape)
                stat["min"] = _shaped([0.0 if e else step_row[f"{a}.min"] for a, e in zip(f.aliases, empty)], f.shape)
                stat["max"] = _shaped([0.0 if e else step_row[f"{a}.max"] for a, e in zip(f.aliases, empty)], f.shape)
                for j, q in enumerate(quantiles):
                    stat[_qkey(q)] = _shaped([None if e else step_row[f"{a}.q"][j]
                                              for a, e in zip(f.aliases, empty)], f.shape)
                stat["nan"] = _shaped([int(step_row[f"{a}.nan"]) for a in f.aliases], f.shape)
                stat["inf"] = _shaped([int(step_row[f"{a}.inf"]) for a in f.aliases], f.shape)
            else:
                stat = {"count": n_steps}
                for key in ("mean", "min", "max"):
                    stat[key] = _shaped([step_row[f"{a}.{key}"] for a in f.aliases], f.shape)
            if f.present in by_path:
                stat["present_fraction"] = n_steps / num_steps
            stat["dtype"] = f.leaf.dtype
            if getattr(f.leaf, "names", None):
                stat["names"] = list(f.leaf.names)
            if getattr(f.leaf, "unit", None):
                stat["unit"] = f.leaf.unit
            out[f.path] = stat

        lengths = eps.get_column("length").to_numpy().astype(np.int64)
        splits_df = (eps.group_by("split").agg(pl.len().alias("episodes"), pl.col("length").sum().alias("steps"))
                     .sort("split"))
        dataset: dict[str, Any] = {
            "name": ds.name, "version": ds.version, "spec": spec.id, "split": split,
            "episodes": int(df.height), "steps": num_steps,
            "splits": {r["split"]: {"episodes": int(r["episodes"]), "steps": int(r["steps"])}
                       for r in splits_df.iter_rows(named=True)},
            "quantile_method": QUANTILE_METHOD,
            "excluded": "NaN and inf values (counted per element in 'nan'/'inf'); absent steps of optional features",
        }
        length = _summary(lengths, quantiles)
        lo, hi = int(lengths.min()), int(lengths.max())
        width = max(1, -(-(hi - lo + 1) // _HIST_BINS))  # integer-wide bins [a, a + width), at most _HIST_BINS
        edges = lo + width * np.arange(-(-(hi - lo + 1) // width) + 1)
        counts, _ = np.histogram(lengths, bins=edges)
        length["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
        dataset["episode_length"] = length

        if clock is not None:
            dur = eps.get_column("_duration").to_numpy().astype(np.float64)
            mdt = eps.get_column("_median_dt").fill_null(float("nan")).to_numpy().astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                rate = np.where((lengths > 1) & (dur > 0), (lengths - 1) / dur, np.nan)
            rate[~np.isfinite(rate)] = np.nan
            ctl: dict[str, Any] = {"clock": clock, "nominal_fps": spec.fps,
                                   "rate_hz_range": list(spec.rate_hz) if spec.rate_hz else None,
                                   "episodes_without_rate": int(np.isnan(rate).sum()),
                                   "rate_hz": _summary(rate, quantiles), "median_dt": _summary(mdt, quantiles)}
            if spec.rate_hz is not None:
                ok = ~np.isnan(rate)
                ctl["episodes_below_range"] = int((rate[ok] < spec.rate_hz[0]).sum())
                ctl["episodes_above_range"] = int((rate[ok] > spec.rate_hz[1]).sum())
            dataset["control_rate"] = ctl
            skew: dict[str, Any] = {}
            for s in streams:
                qv = step_row[f"skew:{s}.q"] or [None, None]
                skew[s] = {"vs": clock, "count": int(step_row[f"skew:{s}.n"]), "median_abs": qv[0], "p99_abs": qv[1],
                           "max_abs": step_row[f"skew:{s}.max"], "mean": step_row[f"skew:{s}.mean"]}
            dataset["timestamp_skew"] = skew
        if by:
            dataset["by"] = _breakdowns(ds, df, by, feats, sums_df, acts, notes)
        if notes:
            dataset["notes"] = notes
    except errors as e:
        raise StatsError(f"{index_file}: {_first_line(e)}") from None
    out[DATASET_KEY] = dataset
    return ds.path, _clean(out)


def dataset_stats(path: str | Path, *, split: str | None = None, by: Sequence[str] = DEFAULT_BY,
                  quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
    """Statistics of a converted dataset (see the module docstring for every key): per low-dim
    step feature and, under ``"_dataset"``, episode/step counts, lengths, control rate, timestamp
    skew and breakdowns ``by`` metadata. ``split``: one split (default: all). JSON-clean (NaN and
    inf are None). Raises :class:`StatsError` / :class:`EmptyDatasetError`."""
    return _compute(path, split=split, by=by, quantiles=quantiles)[1]


def _write(version_dir: Path, stats: Mapping[str, Any]) -> Path:
    from rldskit._io import atomic_write_bytes

    target = DatasetLayout(version_dir).stats_path
    atomic_write_bytes(target, (json.dumps(stats, indent=1, allow_nan=False) + "\n").encode())
    return target


def write_stats(path: str | Path, **kw: Any) -> Path:
    """Compute :func:`dataset_stats` (``kw`` are its options) and write ``<dataset>/stats.json``
    atomically (temp file + ``os.replace``). Returns the file's path."""
    version_dir, stats = _compute(path, split=kw.pop("split", None), by=kw.pop("by", DEFAULT_BY),
                                  quantiles=kw.pop("quantiles", QUANTILES))
    if kw:
        raise TypeError(f"write_stats got unexpected options {sorted(kw)}")
    return _write(version_dir, stats)


# =========================================================================== the table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        if 1e6 <= a < 1e12:  # epoch timestamps: keep milliseconds
            return f"{v:.3f}"
        return f"{v:.4g}" if 1e-3 <= a < 1e6 else f"{v:.3e}"
    return str(v)


def _flat(v: Any) -> list[Any]:
    if isinstance(v, list):
        return [x for item in v for x in _flat(item)]
    return [v]


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v * 1e3:.3g} ms"


def format_table(stats: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`dataset_stats` output: one row per feature element, then the
    dataset section (counts, lengths, control rate, skew, breakdowns)."""
    ds = stats.get(DATASET_KEY, {})
    qkeys = [k for k in next((s for k, s in stats.items() if k != DATASET_KEY and "nan" in s), {}) if
             k.startswith("q") and k[1:2].isdigit()]
    lines: list[str] = []
    if ds:
        split = ds.get("split") or "all splits"
        per = ", ".join(f"{s}: {v['episodes']} ep / {v['steps']} steps" for s, v in ds.get("splits", {}).items())
        lines.append(f"{ds.get('name', '?')} {ds.get('version', '')} ({split}): {ds.get('episodes')} episodes, "
                     f"{ds.get('steps')} steps [{per}]")
        lines.append(f"quantiles: exact over all steps, {ds.get('quantile_method', QUANTILE_METHOD)} interpolation; "
                     "NaN/inf excluded and counted")
        lines.append("")
    header = ["feature", "dtype", "count", "nan", "mean", "std", "min", *qkeys, "max"]
    rows: list[list[str]] = []
    for path, s in stats.items():
        if path == DATASET_KEY or not isinstance(s, Mapping) or "mean" not in s:
            continue
        means = _flat(s["mean"])
        names = s.get("names")
        n = len(means)
        for i in range(n):
            if n == 1 and not isinstance(s["mean"], list):
                label = path
            elif names and len(names) == n:
                label = f"{path}[{names[i]}]"
            else:
                label = f"{path}[{i}]"
            count = s.get("count")
            if "present_fraction" in s:
                count = f"{count} ({s['present_fraction']:.0%})"
            nan = _flat(s["nan"])[i] if "nan" in s else None
            inf = _flat(s["inf"])[i] if "inf" in s else 0
            nan_txt = "" if nan is None else (str(nan) + (f"+{inf}inf" if inf else ""))
            row = [label, str(s.get("dtype", "")), str(count), nan_txt, _fmt(means[i]),
                   _fmt(_flat(s["std"])[i]) if "std" in s else "", _fmt(_flat(s["min"])[i])]
            row += [_fmt(_flat(s[q])[i]) if q in s else "" for q in qkeys]
            row.append(_fmt(_flat(s["max"])[i]))
            rows.append(row)
    widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(header)]
    align = lambda r: "  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines.append(align(header).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += [align(r).rstrip() for r in rows]

    if ds:
        lines.append("")
        el = ds.get("episode_length", {})
        if el:
            qs = ", ".join(f"{k} {_fmt(el[k])}" for k in el if k.startswith("q") and k[1:2].isdigit())
            lines.append(f"episode length: min {_fmt(el.get('min'))}, mean {_fmt(el.get('mean'))}, "
                         f"max {_fmt(el.get('max'))}; {qs}")
            h = el.get("histogram")
            if h:
                e = h["edges"]
                parts = [f"[{e[i]:g}, {e[i + 1]:g}): {c}" for i, c in enumerate(h["counts"])]
                lines.append("  histogram: " + " | ".join(parts))
        cr = ds.get("control_rate")
        if cr:
            r, m = cr.get("rate_hz", {}), cr.get("median_dt", {})
            nominal = f"nominal {_fmt(cr.get('nominal_fps'))} Hz" if cr.get("nominal_fps") else "no nominal fps"
            rng = cr.get("rate_hz_range")
            rng_txt = f", range {_fmt(rng[0])}-{_fmt(rng[1])} Hz" if rng else ""
            lines.append(f"control rate ({cr['clock']}; {nominal}{rng_txt}): per episode min {_fmt(r.get('min'))}, "
                         f"median {_fmt(r.get('q50'))}, mean {_fmt(r.get('mean'))}, max {_fmt(r.get('max'))} Hz "
                         f"over {r.get('count', 0)} episodes; median step {_ms(m.get('q50'))}")
            extra = []
            if cr.get("episodes_without_rate"):
                extra.append(f"{cr['episodes_without_rate']} episodes too short to time")
            if cr.get("episodes_below_range"):
                extra.append(f"{cr['episodes_below_range']} below range")
            if cr.get("episodes_above_range"):
                extra.append(f"{cr['episodes_above_range']} above range")
            if extra:
                lines.append("  " + ", ".join(extra))
        for s, v in ds.get("timestamp_skew", {}).items():
            lines.append(f"skew {s} - {v['vs']}: |median| {_ms(v.get('median_abs'))}, p99 {_ms(v.get('p99_abs'))}, "
                         f"max {_ms(v.get('max_abs'))}, mean {_ms(v.get('mean'))}")
        for b, section in ds.get("by", {}).items():
            lines.append(f"by {b}:")
            for value, e in section.items():
                means = "; ".join(f"{p} mean [{', '.join(_fmt(x) for x in _flat(v))}]"
                                  for p, v in e.get("mean", {}).items())
                lines.append(f"  {value if value != '' else '(empty)'}: {e['episodes']} episodes, {e['steps']} steps"
                             + (f"; {means}" if means else ""))
        for note in ds.get("notes", []):
            lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


# =========================================================================== CLI


def cmd_stats(args: argparse.Namespace) -> int:
    """``rldskit stats PATH``: exit 0, 1 when the selection has no steps, 2 when the dataset is
    missing or unreadable (or stats.json cannot be written)."""
    by = DEFAULT_BY if getattr(args, "by", None) is None else tuple(b for b in args.by.split(",") if b)
    try:
        version_dir, stats = _compute(args.path, split=args.split, by=by, quantiles=QUANTILES)
    except EmptyDatasetError as e:
        print(f"rldskit stats: {e}", file=sys.stderr)
        return 1
    except StatsError as e:
        print(f"rldskit stats: error: {e}", file=sys.stderr)
        return 2
    written = None
    if not args.no_write:
        try:
            written = _write(version_dir, stats)
        except OSError as e:
            print(f"rldskit stats: error: cannot write {DatasetLayout(version_dir).stats_path}: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(stats, indent=1, allow_nan=False))
        if written:
            print(f"wrote {written}", file=sys.stderr)
    else:
        sys.stdout.write(format_table(stats))
        if written:
            print(f"wrote {written}")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``stats PATH [--split S] [--json] [--no-write] [--by KEYS]`` to an argparse
    ``add_subparsers()`` object; the handler is ``args.func(args) -> exit code``."""
    p = subparsers.add_parser("stats", help="per-feature and dataset statistics of a converted dataset; writes "
                                            "stats.json (exit 1 if it has no steps, 2 if it is missing/unreadable)",
                              description="Statistics from a converted dataset's episodes.parquet: per low-dim "
                                          "feature count/mean/std/min/max/exact quantiles (NaN excluded and counted), "
                                          "episode lengths, control rate, timestamp skew, breakdowns by metadata.")
    p.add_argument("path", metavar="PATH", help="<data_dir>/<name>/<version>/ (or a folder holding one dataset)")
    p.add_argument("--split", help="one split (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-write", action="store_true", help="do not write <dataset>/stats.json")
    p.add_argument("--by", help=f"comma-separated breakdowns (default {','.join(DEFAULT_BY)}; '' for none): "
                                "'tag', an episode metadata field, or an episodes.parquet column")
    p.set_defaults(func=cmd_stats)
    return p
