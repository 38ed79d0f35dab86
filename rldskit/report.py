"""``rldskit report``: one self-contained HTML page describing a converted dataset.

    rldskit report data/donkey/1.0.0 --out report/ [--split train] [--open]

:func:`build_report` reads a dataset version folder written by ``rldskit convert`` (its
``episodes.parquet`` step index, step records, ``manifest.json`` and, when present,
``stats.json``) and writes ``<out_dir>/index.html``:

* **Summary**: dataset name, version, spec, splits with episode and step counts, conversion
  counts and the quarantined inputs with their reasons (from ``manifest.json``).
* **Actions and states**: a histogram per element of every action and ``observation/*``
  feature (element names, units and declared bounds from the spec); optional features count
  their present steps only.
* **Trajectories**: actions over time for up to ``max_episodes`` episodes.
* **Episodes**: the episode-length histogram and a per-episode table (length, duration,
  median control rate, worst timestamp skew).
* **Timing**: the achieved control rate (from the spec's primary clock) and every other
  timestamp stream's skew against it, over time within each episode; a note when the spec
  has no ``timestamp/*`` features.
* **Frames**: ``frames_per_camera`` evenly spaced frames per camera, decoded from the step
  records (grey tiles for absent optional frames); a note when the spec has no images.
* **Issues**: quarantined inputs and what the report itself found (non-finite values, values
  outside their declared bounds, timestamps that do not increase, undecodable frames).
* **Statistics**: per-feature mean/std/min/quantiles/max, from ``stats.json`` beside the
  dataset when present (``rldskit.stats`` or the loaders' normaliser write it), else computed
  here from the split's step index.

No local path appears in the page or its marker file: the dataset is named ``<name>/<version>``,
its spec file relative to the dataset folder, and the inputs by the paths the manifest records
(relative to the sources given to ``rldskit convert``, e.g. ``pi5_donkey/ep_0000_00007``), so
a report can be shared as it is.

The page has no external resources: every plot and frame is a ``data:`` URI (PNG/JPEG), the CSS
is inline and there is no JavaScript. Plots are drawn with matplotlib's Agg canvas (imported only
by :func:`build_report`, so ``import rldskit.report`` costs the standard library and numpy).

Writing is atomic: the report is built in a temporary sibling folder which is then renamed to
``out_dir``. An existing ``out_dir`` is replaced only when it is empty or holds a previous
report (its :data:`REPORT_MARKER` file); anything else is refused with ``FileExistsError``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as _dt
import html
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_report", "register_cli", "EmptyDatasetError", "REPORT_FILE", "REPORT_MARKER"]

REPORT_FILE = "index.html"
#: a small JSON file that marks a folder as an rldskit report (so it may be replaced)
REPORT_MARKER = ".rldskit-report.json"
PRESENT_SUFFIX = "_present"

_MAX_ELEMENTS = 24  # subplots per feature figure
_MAX_FEATURES = 16  # histogram figures per section
_MAX_TABLE_ROWS = 300
_TILE = (192, 144)  # max (width, height) of a frame tile
_DPI = 80
_QUANTILE_KEYS = ("q01", "q05", "q10", "q25", "q50", "q75", "q90", "q95", "q99")
_STAT_ORDER = ("count", "present_fraction", "nan", "inf", "mean", "std", "min") + _QUANTILE_KEYS + ("max",)
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")


class EmptyDatasetError(ValueError):
    """The dataset (or the chosen split) has no episodes or no steps; the message names the file."""


# =========================================================================== data


@dataclasses.dataclass
class _Data:
    ds: Any  # rldskit.formats.tfds_dir.DatasetDir
    index: Any  # rldskit.loaders.StepIndex
    split: str
    splits: dict[str, tuple[int, int]]  # split -> (episodes, steps)
    manifest: dict[str, Any] | None
    manifest_note: str | None
    stats: dict[str, Any]
    stats_source: str

    @property
    def spec(self):
        return self.index.spec


def _load(path: str | os.PathLike, split: str | None) -> _Data:
    import pyarrow as pa

    from rldskit.formats.tfds_dir import EPISODE_INDEX_FILE, MANIFEST_FILE, STATS_FILE, DatasetError, open_dataset

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such dataset folder")
    ds = open_dataset(p)
    index_file = ds.index_path
    if not ds.has_index:
        raise DatasetError(f"{ds.path}: no {EPISODE_INDEX_FILE} (converted without a step index?); the report reads "
                           f"the step-major layout: rldskit convert SOURCES --out DATA --name NAME")
    try:
        table = ds.index_table(["split", "length"])
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        raise DatasetError(f"{index_file}: not a readable step index: {e}") from None
    splits: dict[str, tuple[int, int]] = {}
    for name, length in zip(table.column("split").to_pylist(), table.column("length").to_pylist()):
        n, s = splits.get(name, (0, 0))
        splits[name] = (n + 1, s + int(length or 0))
    if not splits or sum(s for _, s in splits.values()) == 0:
        raise EmptyDatasetError(f"{index_file}: the dataset has no episodes ({table.num_rows} rows, 0 steps); "
                                "nothing to report")
    if split is None:
        split = "train" if "train" in splits else sorted(splits)[0]
    elif split not in splits:
        raise KeyError(f"{ds.path}: no split {split!r} in {EPISODE_INDEX_FILE}; it has {', '.join(sorted(splits))}")
    if splits[split][1] == 0:
        raise EmptyDatasetError(f"{index_file}: split {split!r} has no steps; nothing to report")
    index = ds.index(split)

    manifest, manifest_note = None, None
    mf = ds.manifest_path
    if mf.is_file():
        try:
            manifest = ds.manifest()
            if not isinstance(manifest, dict):
                manifest, manifest_note = None, f"{mf}: not a JSON object; conversion counts and quarantine not shown"
        except (OSError, ValueError) as e:
            manifest_note = f"{mf}: unreadable ({e}); conversion counts and quarantine not shown"
    else:
        manifest_note = f"no {MANIFEST_FILE} (not converted by rldskit?): conversion counts and quarantine unknown"

    stats, source = None, ""
    if ds.stats_path.is_file():
        try:
            stats = _known_stats(ds.stats())
            source = f"{STATS_FILE} beside the dataset" if stats else f"{STATS_FILE} has no per-feature statistics; "
        except (OSError, ValueError):
            source = f"{STATS_FILE} is unreadable; "
    if stats is None:
        stats = _compute_stats(index)
        source += f"computed from {EPISODE_INDEX_FILE} (split {split!r})"
    return _Data(ds, index, split, splits, manifest, manifest_note, stats, source)


def _known_stats(obj: Any) -> dict[str, Any] | None:
    """``{feature: {stat: values}, "_dataset": {...}}`` from a stats file (flat, or with the
    features under ``"features"``), or ``None`` when it holds no per-feature statistics."""
    if not isinstance(obj, dict):
        return None
    feats = obj.get("features") if isinstance(obj.get("features"), dict) else obj
    out: dict[str, Any] = {k: v for k, v in feats.items() if not k.startswith("_") and isinstance(v, dict)
                           and any(s in v for s in ("mean", "std", "min", "max"))}
    if not out:
        return None
    if isinstance(obj.get("_dataset"), dict):
        out["_dataset"] = obj["_dataset"]
    return out


def _numeric_columns(index) -> list[str]:
    """Low-dimensional numeric (not bool) columns, without presence masks."""
    out = []
    for key in sorted(index.columns):
        col = index.columns[key]
        if key.endswith(PRESENT_SUFFIX) and key[: -len(PRESENT_SUFFIX)] in index.spec.step_leaves:
            continue
        if col.dtype.kind in "fiu":
            out.append(key)
    return out


def _values(index, key: str) -> np.ndarray:
    """``(n, elements)`` float64 values of ``key`` over the steps where it is present."""
    col = index.columns[key]
    present = index.columns.get(key + PRESENT_SUFFIX)
    x = col[present.astype(bool)] if present is not None else col
    return x.reshape(len(x), -1).astype(np.float64, copy=False)


def _compute_stats(index) -> dict[str, Any]:
    """Per-feature statistics (flat lists, one value per element) of the numeric columns of
    ``index``, timestamps excepted: count, mean, std, min, q01..q99, max. Non-finite values
    are left out (counted by the issues section)."""
    out: dict[str, Any] = {}
    for key in _numeric_columns(index):
        if key.startswith("timestamp/"):
            continue
        x = _values(index, key)
        x = np.where(np.isfinite(x), x, np.nan)
        count = np.sum(np.isfinite(x), axis=0)
        entry: dict[str, Any] = {"count": count.tolist()}
        if len(x) and count.min() > 0:
            q = np.nanquantile(x, [0.01, 0.05, 0.5, 0.95, 0.99], axis=0)
            entry.update(mean=np.nanmean(x, 0).tolist(), std=np.nanstd(x, 0).tolist(), min=np.nanmin(x, 0).tolist(),
                         max=np.nanmax(x, 0).tolist(), q01=q[0].tolist(), q05=q[1].tolist(), q50=q[2].tolist(),
                         q95=q[3].tolist(), q99=q[4].tolist())
        out[key] = entry
    return out


def _labels(leaf, n: int) -> list[str]:
    """One label per flattened element of ``leaf`` (its ``names`` along the last axis)."""
    shape = tuple(getattr(leaf, "shape", ()) or ())
    if not shape:
        return [""] * n
    names = getattr(leaf, "names", None)
    out = []
    for idx in np.ndindex(*shape):
        last = names[idx[-1]] if names else f"[{idx[-1]}]"
        out.append((str(list(idx[:-1])) if len(idx) > 1 else "") + str(last))
    return out[:n] + [f"[{i}]" for i in range(len(out), n)]


def _bounds(leaf, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    ba = leaf.bounds_arrays() if hasattr(leaf, "bounds_arrays") else None
    if ba is None:
        return None
    try:
        shape = tuple(leaf.shape)
        lo = np.broadcast_to(ba[0], shape).reshape(-1)
        hi = np.broadcast_to(ba[1], shape).reshape(-1)
    except ValueError:
        return None
    return (lo, hi) if lo.size == n else None


# =========================================================================== figures


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return int(math.ceil(n / cols)), cols


def _hist_figure(x: np.ndarray, labels: Sequence[str], unit: str | None, bounds) -> str:
    n = min(x.shape[1], _MAX_ELEMENTS)
    rows, cols = _grid(n)
    fig = _figure(2.8 * cols, 2.1 * rows)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        v = x[:, i]
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=int(np.clip(np.sqrt(v.size), 5, 40)), color=_COLOURS[0])
        else:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        if bounds is not None:
            for b in (bounds[0][i], bounds[1][i]):
                if np.isfinite(b):
                    ax.axvline(b, color="#888888", ls="--", lw=1)
        ax.set_title(labels[i] or "value", fontsize=9)
        if unit:
            ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png_uri(fig)


def _episode_time(d: _Data, e: int) -> tuple[np.ndarray, str]:
    """Times of episode ``e``'s steps relative to its first step (s) from the clock, else step indices."""
    idx = d.index
    s, n = int(idx.starts[e]), int(idx.lengths[e])
    clock = d.spec.clock
    if clock and clock in idx.columns:
        ts = idx.columns[clock][s:s + n].astype(np.float64)
        if np.isfinite(ts).all():
            return ts - ts[0], "time since episode start (s)"
    return np.arange(n, dtype=np.float64), "step"


def _trajectory_figure(d: _Data, key: str, episodes: Sequence[int]) -> str:
    idx = d.index
    col = idx.columns[key]
    flat = col.reshape(len(col), -1).astype(np.float64)
    leaf = d.spec.step_leaves[key]
    labels = _labels(leaf, flat.shape[1])
    n = min(flat.shape[1], _MAX_ELEMENTS)
    rows, cols = _grid(n, 2)
    fig = _figure(4.6 * cols, 2.2 * rows)
    xlabel = "step"
    present = idx.columns.get(key + PRESENT_SUFFIX)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, e in enumerate(episodes):
            s, L = int(idx.starts[e]), int(idx.lengths[e])
            t, xlabel = _episode_time(d, e)
            y = flat[s:s + L, i].copy()
            if present is not None:
                y[~present[s:s + L].astype(bool)] = np.nan
            ax.plot(t, y, lw=1, color=_COLOURS[j % len(_COLOURS)], alpha=0.85, label=str(idx.episodes["episode_id"][e]))
        if i == 0 and len(episodes) <= len(_COLOURS):
            ax.legend(fontsize=6, loc="best")
        unit = getattr(leaf, "unit", None)
        ax.set_title(labels[i] + (f" ({unit})" if unit else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        if i >= n - cols:
            ax.set_xlabel(xlabel, fontsize=8)
    fig.tight_layout()
    return _png_uri(fig)


def _length_figure(lengths: np.ndarray) -> str:
    fig = _figure(5.0, 2.6)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = int(lengths.min()), int(lengths.max())
    bins = np.arange(lo, hi + 2) - 0.5 if hi - lo < 40 else 40
    ax.hist(lengths, bins=bins, color=_COLOURS[0])
    if hi - lo < 40:
        ax.set_xlim(lo - 1, hi + 1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("steps per episode", fontsize=8)
    ax.set_ylabel("episodes", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png_uri(fig)


# =========================================================================== timing


@dataclasses.dataclass
class _Timing:
    clock: str | None
    streams: list[str]
    rate: list[np.ndarray]  # per episode: instantaneous rate (Hz) at each interval
    rate_t: list[np.ndarray]
    skew: dict[str, list[np.ndarray]]  # stream -> per episode skew (ms) vs the clock
    skew_t: list[np.ndarray]
    non_increasing: int
    nonfinite: int


def _timing(d: _Data) -> _Timing | None:
    idx, spec = d.index, d.spec
    clock = spec.clock
    if not clock or clock not in idx.columns:
        return None
    streams = [p for p in spec.timestamp_paths if p != clock and p in idx.columns]
    c_all = idx.columns[clock].astype(np.float64)
    out = _Timing(clock, streams, [], [], {s: [] for s in streams}, [], 0, int((~np.isfinite(c_all)).sum()))
    for e in range(idx.num_episodes):
        s, n = int(idx.starts[e]), int(idx.lengths[e])
        c = c_all[s:s + n]
        dt = np.diff(c)
        out.non_increasing += int((dt <= 0).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(dt > 0, 1.0 / dt, np.nan)
        t = c - c[0]
        out.rate.append(rate)
        out.rate_t.append(t[1:])
        out.skew_t.append(t)
        for st in streams:
            v = idx.columns[st][s:s + n].astype(np.float64)
            present = idx.columns.get(st + PRESENT_SUFFIX)
            skew = (v - c) * 1000.0
            if present is not None:
                skew = np.where(present[s:s + n].astype(bool), skew, np.nan)
            out.skew[st].append(skew)
    return out


def _timing_figures(d: _Data, tm: _Timing, episodes: Sequence[int]) -> list[tuple[str, str]]:
    figs = []
    fig = _figure(9.0, 2.8)
    ax = fig.add_subplot(1, 1, 1)
    if d.spec.rate_hz:
        lo, hi = d.spec.rate_hz
        ax.axhspan(lo, hi, color="#2ca02c", alpha=0.12, label=f"gate {lo:g}-{hi:g} Hz")
    if d.spec.fps:
        ax.axhline(d.spec.fps, color="#2ca02c", ls="--", lw=1, label=f"nominal {d.spec.fps:g} Hz")
    for j, e in enumerate(episodes):
        ax.plot(tm.rate_t[e], tm.rate[e], lw=1, color=_COLOURS[j % len(_COLOURS)], alpha=0.85)
    shown = [tm.rate[e][np.isfinite(tm.rate[e])] for e in episodes]
    shown = np.concatenate(shown + [np.asarray([d.spec.fps], dtype=np.float64)] if d.spec.fps else shown)
    if shown.size:  # zoom on the data (the gate band may be much wider than the jitter)
        lo, hi = float(shown.min()), float(shown.max())
        pad = max(0.15 * (hi - lo), 0.02 * max(abs(hi), 1.0))
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("time since episode start (s)", fontsize=8)
    ax.set_ylabel(f"rate from {tm.clock} (Hz)", fontsize=8)
    ax.tick_params(labelsize=7)
    if d.spec.rate_hz or d.spec.fps:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    figs.append(("achieved control rate", _png_uri(fig)))
    if tm.streams:
        rows, cols = _grid(len(tm.streams), 2)
        fig = _figure(4.6 * cols, 2.4 * rows)
        for i, st in enumerate(tm.streams):
            ax = fig.add_subplot(rows, cols, i + 1)
            for j, e in enumerate(episodes):
                ax.plot(tm.skew_t[e], tm.skew[st][e], lw=1, color=_COLOURS[j % len(_COLOURS)], alpha=0.85)
            ax.axhline(0, color="#888888", lw=0.8)
            ax.set_title(f"{st} - {tm.clock} (ms)", fontsize=9)
            ax.set_xlabel("time since episode start (s)", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        figs.append(("timestamp skew", _png_uri(fig)))
    return figs


def _nanstat(f, arrs: Sequence[np.ndarray]) -> float:
    v = np.concatenate([a[np.isfinite(a)] for a in arrs]) if arrs else np.zeros(0)
    return float(f(v)) if v.size else float("nan")


# =========================================================================== frames


def _tile_size(leaf) -> tuple[int, int]:
    h, w = int(leaf.shape[0]), int(leaf.shape[1])
    scale = min(_TILE[0] / w, _TILE[1] / h, 1.0 if max(h, w) >= 64 else 4.0)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _placeholder_tile(size: tuple[int, int], text: str, colour=(160, 160, 160)) -> str:
    from PIL import Image, ImageDraw

    from rldskit import images

    img = Image.new("RGB", size, colour)
    if size[0] >= 30 and size[1] >= 12:
        ImageDraw.Draw(img).text((4, max(0, size[1] // 2 - 6)), text, fill=(255, 255, 255))
    png = images.encode(np.asarray(img), "png")  # drawn with Pillow, encoded by the one codec
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _frame_tile(data: bytes, size: tuple[int, int]) -> str:
    """A decoded frame, scaled to ``size`` and re-encoded (JPEG; PNG for alpha). Raises on bad bytes."""
    from rldskit import images

    mime, data = images.thumbnail(data, size)
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _read_frames(d: _Data, steps: np.ndarray, keys: Sequence[str]) -> list[dict[str, Any] | Exception]:
    from rldskit.loaders import StepSource

    src = StepSource(d.index)
    try:
        return list(src.read_fields(steps, keys))
    except (ValueError, OSError):
        pass  # read step by step so one bad record costs one tile
    out: list[dict[str, Any] | Exception] = []
    for g in steps.tolist():
        try:
            out.append(src.read_fields(np.asarray([g]), keys)[0])
        except (ValueError, OSError) as e:
            out.append(e)
    return out


def _frames(d: _Data, per_camera: int, issues: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """``[(camera path, [(data uri, caption, css class)])]``."""
    idx, spec = d.index, d.spec
    cams = list(spec.image_paths)
    if not cams or per_camera <= 0:
        return []
    steps = np.unique(np.linspace(0, idx.num_steps - 1, min(per_camera, idx.num_steps)).round().astype(np.int64))
    records = _read_frames(d, steps, cams)
    ep, t = idx.locate(steps)
    out = []
    for cam in cams:
        leaf = spec.step_leaves[cam]
        size = _tile_size(leaf)
        present = idx.columns.get(cam + PRESENT_SUFFIX)
        tiles = []
        for g, e, tt, rec in zip(steps.tolist(), ep.tolist(), t.tolist(), records):
            eid = str(idx.episodes["episode_id"][e])
            caption = f"episode {eid}, t={tt}"
            if isinstance(rec, Exception):
                tiles.append((_placeholder_tile(size, "unreadable", (190, 90, 90)), caption + " (unreadable)", "bad"))
                issues.append(_issue("STEP_UNREADABLE", "error", eid, tt, cam, str(rec)))
                continue
            data = rec.get(cam, b"")
            absent = (present is not None and not bool(present[g])) or not data
            if absent:
                tiles.append((_placeholder_tile(size, "absent"), caption + " (absent)", "absent"))
                continue
            try:
                tiles.append((_frame_tile(data, size), caption, "frame"))
            except Exception as e:  # PIL raises many types for corrupt data
                tiles.append((_placeholder_tile(size, "undecodable", (190, 90, 90)), caption + " (undecodable)", "bad"))
                issues.append(_issue("IMAGE_UNDECODABLE", "error", eid, tt, cam, f"{type(e).__name__}: {e}"))
        out.append((cam, tiles))
    return out


# =========================================================================== checks


def _issue(code: str, severity: str, episode: str | None, step: int | None, field: str | None, message: str,
           source: str = "report") -> dict[str, Any]:
    return {"source": source, "code": code, "severity": severity, "episode": episode, "step": step, "field": field,
            "message": message}


def _shown_folder(ds: Any) -> str:
    """The dataset folder as the page names it: ``<name>/<version>``, never its local path."""
    return f"{ds.name}/{ds.version}"


def _shown_source(ds: Any) -> str:
    """Where the spec came from: a file inside the dataset folder by its relative name; any other
    path by its file name only."""
    src = str(ds.spec_source)
    try:
        return Path(src).relative_to(ds.path).as_posix()
    except ValueError:
        return Path(src).name if os.path.isabs(src) else src


def _quarantine_issues(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for q in (manifest or {}).get("quarantine") or []:
        key = str(q.get("key", q.get("index", "?")))
        reasons = q.get("reasons") or [{"code": "QUARANTINED", "message": "no reason recorded"}]
        for r in reasons:
            if not isinstance(r, dict):
                r = {"code": "QUARANTINED", "message": str(r)}
            out.append(_issue(str(r.get("code", "?")), str(r.get("severity", "error")), key, r.get("step"),
                              r.get("field"), str(r.get("message", "")), source="quarantined"))
    return out


def _value_issues(d: _Data, tm: _Timing | None) -> list[dict[str, Any]]:
    idx, spec = d.index, d.spec
    out = []
    for key in _numeric_columns(idx):
        leaf = spec.step_leaves.get(key)
        x = _values(idx, key)
        bad = int((~np.isfinite(x)).sum()) if x.dtype.kind == "f" else 0
        if bad:
            out.append(_issue("NON_FINITE", "error", None, None, key, f"{bad} non-finite values"))
        b = _bounds(leaf, x.shape[1]) if leaf is not None else None
        if b is not None:
            with np.errstate(invalid="ignore"):
                outside = (x < b[0]) | (x > b[1])
            n = int(outside.sum())
            if n:
                out.append(_issue("OUT_OF_BOUNDS", "warning", None, None, key,
                                  f"{n} values outside the declared bounds ({100 * n / x.size:.2g}% of {x.size})"))
    if tm is not None:
        if tm.non_increasing:
            out.append(_issue("TIMESTAMP_NON_MONOTONIC", "error", None, None, tm.clock,
                              f"{tm.non_increasing} control intervals are <= 0 s"))
        if spec.rate_hz:
            r = np.concatenate(tm.rate) if tm.rate else np.zeros(0)
            r = r[np.isfinite(r)]
            n = int(((r < spec.rate_hz[0]) | (r > spec.rate_hz[1])).sum())
            if n:
                out.append(_issue("RATE_OUT_OF_BAND", "warning", None, None, tm.clock,
                                  f"{n} of {r.size} control intervals ({100 * n / max(r.size, 1):.2g}%) are outside "
                                  f"{spec.rate_hz[0]:g}-{spec.rate_hz[1]:g} Hz (the gate applies to episode medians)"))
    return out


# =========================================================================== HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:0 16px 40px;
color:#222;line-height:1.4}
h1{font-size:1.5em;margin:18px 0 4px}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:1em;margin:14px 0 4px}.sub{color:#666;margin:0 0 8px}
table{border-collapse:collapse;font-size:.85em;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 7px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0c040;padding:6px 10px;margin:8px 0}
.ok{color:#2a7a2a}.err{color:#b22}.warn{color:#a60}
img.plot{max-width:100%;height:auto;display:block}
.strip{display:flex;flex-wrap:wrap;gap:6px}.strip figure{margin:0;font-size:.75em;color:#555;max-width:200px}
.strip img{display:block;border:1px solid #ccc}figure.absent img{border-style:dashed}figure.bad img{border-color:#b22}
nav a{margin-right:10px;font-size:.9em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        return f"{f:.4g}" if f == 0 or 1e-3 <= abs(f) < 1e6 else f"{f:.3e}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None,
           limit: int = _MAX_TABLE_ROWS) -> str:
    numeric = numeric or [False] * len(header)
    parts = ["<table><thead><tr>", "".join(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for row in rows[:limit]:
        parts.append("<tr>" + "".join(f'<td class="n">{_e(_fmt(v))}</td>' if num else f"<td>{_e(_fmt(v))}</td>"
                                      for v, num in zip(row, numeric)) + "</tr>")
    parts.append("</tbody></table>")
    if len(rows) > limit:
        parts.append(f'<p class="sub">{len(rows) - limit} more rows not shown.</p>')
    return "".join(parts)


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    return "<table><tbody>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows) + \
        "</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _img(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{_e(alt)}">'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _feature_sections(d: _Data, keys: Sequence[str], what: str) -> str:
    if not keys:
        return _note(f"The spec {d.spec.id} has no low-dimensional {what} features.")
    parts = []
    for key in keys[:_MAX_FEATURES]:
        leaf = d.spec.step_leaves[key]
        x = _values(d.index, key)
        unit = getattr(leaf, "unit", None)
        opt = " (optional: present steps only)" if key + PRESENT_SUFFIX in d.index.columns else ""
        head = f"<h3>{_e(key)}</h3><p class=\"sub\">{x.shape[0]} values per element{_e(opt)}" + \
            (f"; unit {_e(unit)}" if unit else "") + \
            ("; dashed lines: declared bounds" if _bounds(leaf, x.shape[1]) is not None else "") + \
            (f"; first {_MAX_ELEMENTS} of {x.shape[1]} elements" if x.shape[1] > _MAX_ELEMENTS else "") + "</p>"
        if x.shape[0] == 0:
            parts.append(head + _note(f"{key} is never present in split {d.split!r}."))
            continue
        parts.append(head + _img(_hist_figure(x, _labels(leaf, x.shape[1]), unit, _bounds(leaf, x.shape[1])),
                                 f"histograms of {key}"))
    if len(keys) > _MAX_FEATURES:
        parts.append(_note(f"{len(keys) - _MAX_FEATURES} more features not plotted: {', '.join(keys[_MAX_FEATURES:])}"))
    return "".join(parts)


def _stats_rows(stats: dict[str, Any], spec) -> tuple[list[str], list[list[Any]], list[tuple[str, Any]]]:
    present_keys: list[str] = []
    rows: list[list[Any]] = []
    keys = sorted(k for k in stats if not k.startswith(("_", "timestamp/")) and isinstance(stats[k], dict))
    for key in keys:
        entry = stats[key]
        for k in entry:
            if k not in present_keys and (k in _STAT_ORDER or re.fullmatch(r"q\d\d", k)):
                present_keys.append(k)
    cols = [k for k in _STAT_ORDER if k in present_keys] + sorted(k for k in present_keys if k not in _STAT_ORDER)
    for key in keys:
        entry = stats[key]
        arrs = {}
        n = 1
        for k in cols:
            if k in entry:
                try:
                    arrs[k] = np.asarray(entry[k], dtype=np.float64).reshape(-1)
                except (TypeError, ValueError):
                    continue
                n = max(n, arrs[k].size)
        leaf = spec.step_leaves.get(key)
        labels = _labels(leaf, n) if leaf is not None else [f"[{i}]" for i in range(n)] if n > 1 else [""]
        for i in range(n):
            row: list[Any] = [key, labels[i] if i < len(labels) else f"[{i}]"]
            for k in cols:
                a = arrs.get(k)
                v = None if a is None else (a[i] if a.size == n else a[0] if a.size == 1 else None)
                row.append(int(v) if k == "count" and v is not None and math.isfinite(v) else v)
            rows.append(row)
    ds_rows: list[tuple[str, Any]] = []

    def flatten(prefix: str, v: Any, depth: int) -> None:
        if isinstance(v, dict) and depth < 4:
            for k2, v2 in v.items():
                flatten(f"{prefix}.{k2}" if prefix else str(k2), v2, depth + 1)
        else:
            ds_rows.append((prefix, _short(v)))

    if isinstance(stats.get("_dataset"), dict):
        flatten("", stats["_dataset"], 0)
    return ["feature", "element", *cols], rows, ds_rows


def _short(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        if len(v) > 8:
            return json.dumps(v[:8])[:-1] + f", ... ({len(v)} values)]"
        return json.dumps(v)
    if isinstance(v, dict):
        return json.dumps(v)[:200]
    return v


def _render(d: _Data, *, max_episodes: int, frames_per_camera: int) -> str:
    import rldskit

    idx, spec, ds = d.index, d.spec, d.ds
    title = f"{ds.name} {ds.version} — {spec.id}"
    lengths = idx.lengths
    n_ep = idx.num_episodes
    shown = list(range(min(max_episodes, n_ep)))
    tm = _timing(d)
    issues = _quarantine_issues(d.manifest)
    frames = _frames(d, frames_per_camera, issues)
    issues += _value_issues(d, tm)
    numeric = _numeric_columns(idx)
    actions = [k for k in numeric
               if k == "action" or k.startswith("action/") or k.rsplit("/", 1)[-1].endswith("_action")]
    states = [k for k in numeric if k.startswith("observation/")]
    sections = []

    # ---- summary
    counts = (d.manifest or {}).get("counts") or {}
    quarantine = (d.manifest or {}).get("quarantine") or []
    rows: list[tuple[str, Any]] = [
        ("dataset", ds.name), ("version", ds.version), ("folder", _shown_folder(ds)),
        ("spec", f"{spec.id} (version {spec.version}, from {_shown_source(ds)})"),
        ("description", spec.description), ("last step", spec.last_step),
        ("nominal rate", f"{spec.fps:g} Hz" if spec.fps else "not declared"),
        ("rate gate", f"{spec.rate_hz[0]:g}-{spec.rate_hz[1]:g} Hz" if spec.rate_hz else "not declared"),
        ("cameras", ", ".join(spec.image_paths) or "none"),
        ("timestamps", ", ".join(spec.timestamp_paths) or "none"),
        ("record formats", ", ".join(ds.file_formats)),
        ("report split", f"{d.split}: {n_ep} episodes, {idx.num_steps} steps"),
        ("episode length", f"min {int(lengths.min())}, median {float(np.median(lengths)):g}, max {int(lengths.max())}"),
    ]
    if counts:
        rows.append(("conversion", ", ".join(f"{k} {v}" for k, v in counts.items())))
    rows.append(("quarantined", len(quarantine) if d.manifest is not None else "unknown"))
    body = _kv(rows)
    body += "<h3>Splits</h3>" + _table(["split", "episodes", "steps"],
                                        [[s, n, st] for s, (n, st) in sorted(d.splits.items())], [False, True, True])
    if d.manifest_note:
        body += _note(d.manifest_note)
    if quarantine:
        qrows = []
        for q in quarantine:
            reasons = q.get("reasons") or []
            qrows.append([q.get("key", q.get("index")), q.get("split", ""),
                          "; ".join(f"{r.get('code', '?')}: {r.get('message', '')}" if isinstance(r, dict) else str(r)
                                    for r in reasons)])
        body += "<h3>Quarantined inputs</h3>" + _table(["input", "split", "reasons"], qrows)
    else:
        body += '<p class="ok">No input was quarantined.</p>' if d.manifest is not None else ""
    sections.append(_section("summary", "Summary", body))

    # ---- actions, states
    sections.append(_section("actions", "Action histograms", _feature_sections(d, actions, "action")))
    sections.append(_section("states", "State histograms", _feature_sections(d, states, "observation (state)")))

    # ---- trajectories
    if actions:
        xlabel = _episode_time(d, shown[0])[1]
        body = f'<p class="sub">First {len(shown)} of {n_ep} episodes; one colour per episode; x axis: {_e(xlabel)}' + \
            (" (no timestamps)" if xlabel == "step" else "") + ".</p>"
        body += "".join(f"<h3>{_e(k)}</h3>" + _img(_trajectory_figure(d, k, shown), f"{k} over time") for k in actions)
    else:
        body = _note("No action features to plot.")
    sections.append(_section("trajectories", "Action trajectories", body))

    # ---- episodes
    body = _img(_length_figure(lengths), "episode length histogram")
    ep_rows = []
    for e in range(n_ep):
        row: list[Any] = [str(idx.episodes["episode_id"][e]), int(lengths[e])]
        if "terminal" in idx.episodes:
            row.append(bool(idx.episodes["terminal"][e]))
        if tm is not None:
            t, _ = _episode_time(d, e)
            row += [float(t[-1]), _nanstat(np.median, [tm.rate[e]])]
            row.append(_nanstat(lambda v: np.max(np.abs(v)), [tm.skew[s][e] for s in tm.streams])
                       if tm.streams else None)
        ep_rows.append(row)
    header = ["episode", "steps"] + (["terminal"] if "terminal" in idx.episodes else [])
    if tm is not None:
        header += ["duration (s)", "median rate (Hz)", "max |skew| (ms)"]
    body += "<h3>Episodes</h3>" + _table(header, ep_rows, [False, True] + [False] * ("terminal" in idx.episodes) +
                                         [True] * (3 if tm is not None else 0))
    sections.append(_section("episodes", "Episodes", body))

    # ---- timing
    if tm is None:
        body = _note(f"The spec {spec.id} has no timestamp/* features: control rate and timestamp skew "
                     "cannot be shown.")
    else:
        all_rate = [r for r in tm.rate]
        trows: list[tuple[str, Any]] = [
            ("clock", tm.clock),
            ("median rate (Hz)", _nanstat(np.median, all_rate)),
            ("5th / 95th percentile rate (Hz)", f"{_fmt(_nanstat(lambda v: np.quantile(v, 0.05), all_rate))} / "
                                                f"{_fmt(_nanstat(lambda v: np.quantile(v, 0.95), all_rate))}"),
            ("non-increasing control intervals", tm.non_increasing),
        ]
        for st in tm.streams:
            trows.append((f"skew {st} (ms): median / max |.|",
                          f"{_fmt(_nanstat(np.median, tm.skew[st]))} / "
                          f"{_fmt(_nanstat(lambda v: np.max(np.abs(v)), tm.skew[st]))}"))
        body = _kv(trows)
        body += f'<p class="sub">First {len(shown)} of {n_ep} episodes; one colour per episode.</p>'
        for name, uri in _timing_figures(d, tm, shown):
            body += f"<h3>{_e(name.capitalize())}</h3>" + _img(uri, name)
        if not tm.streams:
            body += _note(f"{tm.clock} is the only timestamp stream: no skew to show.")
    sections.append(_section("timing", "Control rate and timestamp skew", body))

    # ---- frames
    if not spec.image_paths:
        body = _note(f"The spec {spec.id} has no image features: no frames to show.")
    else:
        body = '<p class="sub">Evenly spaced over the split; grey tiles are absent optional frames.</p>'
        for cam, tiles in frames:
            body += f"<h3>{_e(cam)}</h3><div class=\"strip\">" + "".join(
                f'<figure class="{cls}"><img src="{uri}" alt="{_e(cam)}: {_e(cap)}"><figcaption>{_e(cap)}</figcaption>'
                f"</figure>" for uri, cap, cls in tiles) + "</div>"
    sections.append(_section("frames", "Sample frames", body))

    # ---- issues
    if issues:
        body = _table(["source", "code", "severity", "episode / input", "step", "field", "message"],
                      [[i["source"], i["code"], i["severity"], i["episode"], i["step"], i["field"], i["message"]]
                       for i in issues])
    else:
        body = '<p class="ok">No quarantined inputs and nothing wrong found in the split.</p>'
    sections.append(_section("issues", "Validation and quarantine issues", body))

    # ---- stats
    header, rows_, ds_rows = _stats_rows(d.stats, spec)
    body = f'<p class="sub">Source: {_e(d.stats_source)}.</p>'
    body += _table(header, rows_, [False, False] + [True] * (len(header) - 2), limit=1000) if rows_ else \
        _note("No per-feature statistics.")
    if ds_rows:
        body += "<h3>Dataset</h3>" + _kv(ds_rows[:_MAX_TABLE_ROWS])
        if len(ds_rows) > _MAX_TABLE_ROWS:
            body += f'<p class="sub">{len(ds_rows) - _MAX_TABLE_ROWS} more rows not shown.</p>'
    if any(k.startswith("timestamp/") for k in d.stats):
        body += '<p class="sub">Timestamp features are summarised in the timing section.</p>'
    sections.append(_section("stats", "Statistics", body))

    nav = "<nav>" + "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name in (
        ("summary", "Summary"), ("actions", "Actions"), ("states", "States"), ("trajectories", "Trajectories"),
        ("episodes", "Episodes"), ("timing", "Timing"), ("frames", "Frames"), ("issues", "Issues"),
        ("stats", "Statistics"))) + "</nav>"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class=\"sub\">rldskit {_e(rldskit.__version__)} report of split {_e(d.split)}, "
            f"generated {_e(now)}</p>{nav}{''.join(sections)}</body></html>\n")


# =========================================================================== writing


def _looks_like_report(path: Path) -> bool:
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / REPORT_MARKER).is_file():
        return True
    return not any(path.iterdir())


def _check_out_dir(out_dir: Path) -> None:
    if (out_dir.exists() or out_dir.is_symlink()) and not _looks_like_report(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not an rldskit report (no {REPORT_MARKER}); "
                              "refusing to replace it: choose another output folder or remove it")


def _write(out_dir: Path, page: str, marker: dict[str, Any]) -> Path:
    from rldskit._io import fsync_dir, write_all

    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        for name, data in ((REPORT_FILE, page.encode("utf-8")), (REPORT_MARKER, json.dumps(marker).encode())):
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        _check_out_dir(out_dir)
        if out_dir.exists():
            old = parent / f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}"
            os.rename(out_dir, old)
            try:
                os.rename(tmp, out_dir)
            except BaseException:
                os.rename(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / REPORT_FILE


def build_report(path: str | os.PathLike, out_dir: str | os.PathLike, *, split: str | None = None,
                 max_episodes: int = 20, frames_per_camera: int = 8) -> Path:
    """Write a self-contained HTML report of the converted dataset at ``path`` (a dataset version
    folder, or a folder holding exactly one) to ``out_dir/index.html`` and return that file's path.

    ``split``: the split to describe (default ``train``, else the first); the summary lists all.
    ``max_episodes``: episodes drawn in the trajectory and timing plots. ``frames_per_camera``:
    evenly spaced sample frames per camera.

    Raises :class:`EmptyDatasetError` (a ``ValueError`` naming ``episodes.parquet``) for a dataset
    or split without steps, ``FileNotFoundError`` for a missing path, ``DatasetError`` (a
    ``ValueError``) for a folder that is not a converted dataset, ``KeyError`` for an unknown
    split and ``FileExistsError`` when ``out_dir`` exists and is not a previous report."""
    if max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
    if frames_per_camera < 0:
        raise ValueError(f"frames_per_camera must be >= 0, got {frames_per_camera}")
    out = Path(out_dir).absolute()
    _check_out_dir(out)
    d = _load(path, split)
    page = _render(d, max_episodes=max_episodes, frames_per_camera=frames_per_camera)
    marker = {"format": "rldskit.report/1", "dataset": _shown_folder(d.ds), "split": d.split,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    return _write(out, page, marker)


# =========================================================================== CLI


def cmd_report(args: argparse.Namespace) -> int:
    def err(msg: str, code: int) -> int:
        print(f"rldskit: error: {msg}", file=sys.stderr)
        return code

    try:
        index_html = build_report(args.path, args.out, split=args.split, max_episodes=args.max_episodes,
                                  frames_per_camera=args.frames)
    except EmptyDatasetError as e:
        return err(str(e), 1)
    except KeyError as e:
        return err(str(e.args[0]) if e.args else str(e), 2)
    except ImportError as e:
        return err(f"{e}; the report needs matplotlib, pyarrow and the loaders: "
                   "pip install 'rldskit[grain]' matplotlib", 2)
    except (OSError, ValueError) as e:
        return err(str(e), 2)
    print(f"report: {index_html}")
    if args.open:
        import webbrowser

        webbrowser.open(index_html.as_uri())
    return 0


def register_cli(subparsers) -> None:
    """Add ``report PATH --out DIR [--split S] [--open]`` to an argparse subparsers object."""
    p = subparsers.add_parser("report", help="write a self-contained HTML report of a converted dataset "
                                             "(exit 0 written, 1 empty dataset, 2 missing or unreadable)")
    p.add_argument("path", metavar="PATH", help="a dataset version folder <data_dir>/<name>/<version>/ (or a folder "
                                                "holding exactly one)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced if it holds a previous report)")
    p.add_argument("--split", help="split to describe (default: train, else the first)")
    p.add_argument("--max-episodes", type=int, default=20, help="episodes drawn in trajectory and timing plots")
    p.add_argument("--frames", type=int, default=8, help="sample frames per camera")
    p.add_argument("--open", action="store_true", help="open the report in a web browser")
    p.set_defaults(func=cmd_report)
