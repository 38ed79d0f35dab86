"""TFDS dataset directories: the converted RLDS layout, written and read without TensorFlow.

A *TFDS dataset directory* is ``<data_dir>/<name>/<version>/`` holding:

* **shards**: ``{name}-{split}.{tfrecord|array_record}-{index:05d}-of-{count:05d}``
  (:func:`shard_name`), one RLDS episode per record, each record the ``tf.train.Example``
  that :func:`rldskit.formats.tfexample.encode_episode` writes. TFRecord shards are what
  ``as_dataset()``/tf.data read; ArrayRecord shards what ``as_data_source()``/Grain read.
  Both may sit side by side; they then hold the same episodes with the same sharding.
* ``features.json``: the TFDS feature tree (``spec.to_tfds_features_json()``).
* ``rldskit_spec.json``: the exact :class:`~rldskit.spec.EpisodeSpec` (units, bounds,
  last-step convention), written by rldskit only. Foreign datasets (Open-X) lack it.
* ``dataset_info.json``: name, version, file format(s), and per split the episode count of
  every shard (``shardLengths``) and its size. It is written **last** (:func:`write_tfds_metadata`),
  so a folder without it is not a finished dataset, whatever shards it holds.

``tfds.builder_from_directory(dir)`` reads what :func:`write_tfds_metadata` finishes: with
``fileFormat`` ``tfrecord`` and ``alternativeFileFormats: ["array_record"]`` (tfds 4.9.10)
``as_dataset()`` reads the TFRecord shards and ``as_data_source()`` the ArrayRecord shards
(it switches the builder's ``info.file_format`` to the random-access format, so call
``as_dataset()`` on a builder that has not served ``as_data_source()``). ``as_dataset()``
cannot read ArrayRecord at all, which is why TFRecord is the primary format when both exist.

:class:`DatasetDir` (from :func:`open_dataset`, exported as ``rldskit.open``) reads any such
directory, ours or an Open-X one: the spec comes from ``rldskit_spec.json`` when present, else
from ``features.json`` plus an explicit ``last_step`` (never guessed: :class:`SpecError`
otherwise). It iterates :class:`~rldskit.episode.Episode` s, and :meth:`DatasetDir.verify`
reports every missing, corrupt, miscounted or undecodable shard as an
:class:`~rldskit.issues.Issue` naming the file (and the byte offset or record index).
A folder that is not a TFDS dataset raises :class:`DatasetError` saying what was expected.

**The folder has one owner.** This module alone knows the names of a dataset version folder's
own files and how to read them: :class:`DatasetLayout` (the base of :class:`DatasetDir`, usable
on a folder that is not, or not yet, a finished dataset) gives their paths (``info_path``,
``features_path``, ``spec_path``, ``index_path``, ``manifest_path``, ``stats_path``), whether the
folder is finished (``is_finished``: ``dataset_info.json`` is there) and their readers
(:meth:`~DatasetLayout.index_table`, the one reader of ``episodes.parquet``, also behind
:meth:`DatasetDir.index` and :class:`~rldskit.formats.step_index.StepIndex`;
:meth:`~DatasetLayout.stats`; :meth:`~DatasetLayout.manifest`). Besides the shards and
``steps/``, a converted folder may hold:

* ``episodes.parquet``: the step index (one row per episode; written by the converter).
* ``manifest.json``: the conversion's inputs, outputs and quarantine (written by the converter).
* ``stats.json``: per-feature statistics (written by ``rldskit stats``).

:func:`is_finished` and :func:`finished_versions` answer "is this folder a finished dataset"
and "which version folders under a base are" for code that has no :class:`DatasetDir` yet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rldskit._io import atomic_write_bytes
from rldskit.episode import Episode
from rldskit.issues import Issue, issue
from rldskit.spec import EpisodeSpec, SpecError

__all__ = ["DatasetDir", "DatasetLayout", "DatasetError", "open_dataset", "is_dataset_dir", "is_finished",
           "finished_versions", "read_index_table", "shard_name", "write_tfds_metadata", "FILE_FORMATS",
           "DATASET_INFO_FILE", "FEATURES_FILE", "SPEC_FILE", "EPISODE_INDEX_FILE", "STATS_FILE", "MANIFEST_FILE",
           "LAYOUT_FILES"]

#: The record file formats rldskit reads and writes (TFDS ``FileFormat`` values).
FILE_FORMATS = ("tfrecord", "array_record")
DATASET_INFO_FILE = "dataset_info.json"
FEATURES_FILE = "features.json"
SPEC_FILE = "rldskit_spec.json"
#: Per-episode index written beside the shards by the converter (columns include split, length).
EPISODE_INDEX_FILE = "episodes.parquet"
#: Per-feature statistics beside the shards (``rldskit stats`` writes it; the loaders normalise with it).
STATS_FILE = "stats.json"
#: The conversion's record (inputs, outputs with sha256, quarantine) written by the converter.
MANIFEST_FILE = "manifest.json"
#: The dataset folder's own files (besides the shards and ``steps/``), in no particular order.
LAYOUT_FILES = (DATASET_INFO_FILE, FEATURES_FILE, SPEC_FILE, EPISODE_INDEX_FILE, MANIFEST_FILE, STATS_FILE)
#: TFDS's default shard file template (``tfds.core.naming.DEFAULT_FILENAME_TEMPLATE``).
FILEPATH_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_TFRECORD_OVERHEAD = 16  # bytes of framing per TFRecord record (length, 2 CRCs)


class DatasetError(ValueError):
    """A folder is not a (finished, readable) TFDS dataset. The message names the path and
    what was expected there."""


def _shard_digits(count: int) -> int:
    return max(5, len(str(count)))  # as TFDS: at least 5 digits, more for >= 100000 shards


def _format_template(template: str, name: str, split: str, file_format: str, index: int, count: int) -> str:
    n = _shard_digits(count)
    x, y = f"{index:0{n}d}", f"{count:0{n}d}"
    try:
        return template.format(DATASET=name, SPLIT=split, FILEFORMAT=file_format, SHARD_INDEX=x, NUM_SHARDS=y,
                               SHARD_X_OF_Y=f"{x}-of-{y}")
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(f"filepathTemplate {template!r} cannot be filled in: {e}") from None


def shard_name(name: str, split: str, file_format: str, index: int, count: int) -> str:
    """The file name TFDS gives shard ``index`` of ``count`` of a split:
    ``{name}-{split}.{file_format}-{index:05d}-of-{count:05d}``."""
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    return _format_template(FILEPATH_TEMPLATE, name, split, file_format, index, count)


# =========================================================================== writing


def write_tfds_metadata(version_dir: str | os.PathLike, spec: EpisodeSpec, *, name: str, file_format: str,
                        splits: Mapping[str, Sequence[int]], split_bytes: Mapping[str, int],
                        alternative_file_formats: Sequence[str] = (), description: str = "",
                        citation: str = "") -> Path:
    """Finish a dataset whose shards are already in ``version_dir`` under their
    :func:`shard_name` names: write ``features.json``, ``rldskit_spec.json`` and, last,
    ``dataset_info.json`` (each atomically). Returns the ``dataset_info.json`` path.

    ``splits`` maps a split to the episode count of each of its shards, in shard order;
    ``split_bytes`` gives each split's size in bytes (of the ``file_format`` shards). Shards of
    ``alternative_file_formats`` must exist with the same sharding. Raises ``ValueError`` for
    inconsistent arguments and ``FileNotFoundError`` listing the shards that are absent (so no
    finished-looking dataset is ever written over missing shards). The version is ``spec.version``."""
    version_dir = Path(version_dir)
    formats = (file_format, *alternative_file_formats)
    for fmt in formats:
        if fmt not in FILE_FORMATS:
            raise ValueError(f"file format must be one of {FILE_FORMATS}, got {fmt!r}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"file formats repeat: {list(formats)}")
    if not splits:
        raise ValueError("a dataset needs at least one split")
    if set(splits) != set(split_bytes):
        raise ValueError(f"splits {sorted(splits)} and split_bytes {sorted(split_bytes)} name different splits")
    missing = []
    for split, lengths in splits.items():
        if not lengths:
            raise ValueError(f"split {split!r} has no shards (were all its episodes quarantined?); "
                             "TFDS cannot read an empty split: leave it out")
        if any(int(n) < 0 for n in lengths):
            raise ValueError(f"split {split!r}: shard lengths must be counts >= 0, got {list(lengths)}")
        for fmt in formats:
            for i in range(len(lengths)):
                p = version_dir / shard_name(name, split, fmt, i, len(lengths))
                if not p.is_file():
                    missing.append(p.name)
    if missing:
        raise FileNotFoundError(f"{version_dir}: {len(missing)} shards are missing, so the dataset is not finished: "
                                + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    from rldskit import __version__

    info: dict[str, Any] = {
        "citation": citation,
        "description": description,
        "fileFormat": file_format,
        "moduleName": __name__,
        "name": name,
        "releaseNotes": {spec.version: f"written by rldskit {__version__}"},
        "splits": [{"filepathTemplate": FILEPATH_TEMPLATE, "name": split, "numBytes": str(int(split_bytes[split])),
                    "shardLengths": [str(int(n)) for n in lengths]} for split, lengths in splits.items()],
        "version": spec.version,
    }
    if alternative_file_formats:
        info["alternativeFileFormats"] = list(alternative_file_formats)
    atomic_write_bytes(version_dir / FEATURES_FILE, (json.dumps(spec.to_tfds_features_json(), indent=2) + "\n").encode())
    atomic_write_bytes(version_dir / SPEC_FILE, spec.to_json().encode())
    path = version_dir / DATASET_INFO_FILE
    atomic_write_bytes(path, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return path


# =========================================================================== finding


def _looks_unfinished(folder: Path) -> bool:
    """Shards (or their temp files) but no ``dataset_info.json``: a conversion that did not finish."""
    return any(f".{fmt}-" in p.name for p in folder.iterdir() for fmt in FILE_FORMATS)


def _find_version_dir(path: Path) -> Path:
    """``path`` itself when it holds ``dataset_info.json``, else the single folder one or two
    levels down that does (``<name>/`` or ``<data_dir>/`` given for ``<name>/<version>/``)."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise DatasetError(f"{path}: not a directory (a TFDS dataset is a folder with {DATASET_INFO_FILE})")
    if (path / DATASET_INFO_FILE).is_file():
        return path
    for pattern in (f"*/{DATASET_INFO_FILE}", f"*/*/{DATASET_INFO_FILE}"):
        found = sorted(p.parent for p in path.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DatasetError(f"{path}: holds {len(found)} datasets ({', '.join(str(f.relative_to(path)) for f in found)}); "
                               "give the version folder of one")
    if _looks_unfinished(path):
        raise DatasetError(f"{path}: has shards but no {DATASET_INFO_FILE}: an unfinished conversion, not a dataset "
                           "(rerun the conversion)")
    raise DatasetError(f"{path}: not a TFDS dataset: no {DATASET_INFO_FILE} in it or in the version folders below it")


def is_dataset_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder :func:`open_dataset` would take for a (possibly
    unfinished) TFDS dataset: ``dataset_info.json`` in it or one or two levels down, or shards."""
    p = Path(path)
    if not p.is_dir():
        return False
    return ((p / DATASET_INFO_FILE).is_file() or any(p.glob(f"*/{DATASET_INFO_FILE}"))
            or any(p.glob(f"*/*/{DATASET_INFO_FILE}")) or _looks_unfinished(p))


def _name_version(info: Mapping[str, Any], where: Path) -> tuple[str, str]:
    name, version = info.get("name"), info.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise DatasetError(f"{where}: 'name' and 'version' must be non-empty strings, got {name!r}, {version!r}")
    return name, version


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; a TFDS dataset folder needs its {what}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON: {e}") from None


# =========================================================================== the layout


def read_index_table(path: str | os.PathLike, columns: Sequence[str] | None = None):  # -> pyarrow.Table
    """The step index file at ``path`` (an ``episodes.parquet``) as a ``pyarrow.Table``, all its
    columns or only ``columns``. The one reader of that file: :meth:`DatasetLayout.index_table`,
    :class:`~rldskit.formats.step_index.StepIndex`, the statistics and the report go through it
    (polars users convert the table with ``polars.from_arrow``). pyarrow's errors pass through
    unchanged (``OSError`` for I/O, ``pyarrow.ArrowInvalid``, a ``ValueError``, for a file that is
    not parquet or lacks a column), so each caller words its own message."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=None if columns is None else list(columns))


def _read_optional_json(path: Path) -> Any | None:
    """The JSON document at ``path``, or ``None`` when no such file exists. ``OSError`` when it
    cannot be read, ``ValueError`` (``json.JSONDecodeError``, ``UnicodeDecodeError``) when it is
    not JSON."""
    if not path.is_file():
        return None
    return json.loads(path.read_bytes())


class DatasetLayout:
    """Where the files of a dataset version folder are, and how to read them (see the module
    docstring, *The folder has one owner*). Any folder, finished or not: the converter uses it
    on the folder it is writing. :class:`DatasetDir` is one, for a dataset that opened."""

    def __init__(self, path: str | os.PathLike):
        #: the version folder (``<data_dir>/<name>/<version>/``)
        self.path = Path(path)

    @property
    def info_path(self) -> Path:
        """``dataset_info.json``: written last, so its presence marks a finished dataset."""
        return self.path / DATASET_INFO_FILE

    @property
    def features_path(self) -> Path:
        """``features.json``: the TFDS feature tree."""
        return self.path / FEATURES_FILE

    @property
    def spec_path(self) -> Path:
        """``rldskit_spec.json``: the exact :class:`~rldskit.spec.EpisodeSpec` (rldskit's datasets only)."""
        return self.path / SPEC_FILE

    @property
    def index_path(self) -> Path:
        """``episodes.parquet``: the step index (one row per episode)."""
        return self.path / EPISODE_INDEX_FILE

    @property
    def manifest_path(self) -> Path:
        """``manifest.json``: what the conversion read, wrote and quarantined."""
        return self.path / MANIFEST_FILE

    @property
    def stats_path(self) -> Path:
        """``stats.json``: per-feature statistics (``rldskit stats``)."""
        return self.path / STATS_FILE

    @property
    def is_finished(self) -> bool:
        """True when ``dataset_info.json`` is there (a conversion writes it last)."""
        return self.info_path.is_file()

    @property
    def has_index(self) -> bool:
        """True when the folder holds a step index file."""
        return self.index_path.is_file()

    def index_table(self, columns: Sequence[str] | None = None):  # -> pyarrow.Table
        """The step index as a ``pyarrow.Table`` (:func:`read_index_table`: pyarrow's errors, and
        ``FileNotFoundError`` when there is none)."""
        return read_index_table(self.index_path, columns)

    def stats(self) -> Any | None:
        """The parsed ``stats.json``, or ``None`` when there is none. ``OSError`` when it cannot
        be read, ``ValueError`` when it is not JSON; what it must hold is the reader's business."""
        return _read_optional_json(self.stats_path)

    def manifest(self) -> Any | None:
        """The parsed ``manifest.json``, or ``None`` when there is none. ``OSError`` when it
        cannot be read, ``ValueError`` when it is not JSON."""
        return _read_optional_json(self.manifest_path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def is_finished(path: str | os.PathLike) -> bool:
    """True when the folder ``path`` is a finished dataset version folder (``dataset_info.json``
    is in it). Nothing is parsed: :func:`open_dataset` says whether it is readable."""
    return DatasetLayout(path).is_finished


def finished_versions(base: str | os.PathLike) -> list[Path]:
    """The finished version folders directly under ``base`` (``<data_dir>/<name>/``), sorted by
    path; ``[]`` when ``base`` is not a folder."""
    b = Path(base)
    if not b.is_dir():
        return []
    return sorted(p for p in b.iterdir() if p.is_dir() and is_finished(p))


# =========================================================================== reading


class DatasetDir(DatasetLayout):
    """One TFDS RLDS dataset on disk (see the module docstring). Build with :func:`open_dataset`.

    ``splits`` maps each split to its shard paths in the primary ``file_format``;
    :meth:`shards` gives them for any of ``file_formats``. Nothing is read from the shards
    until :meth:`episodes`, :meth:`num_steps`, :meth:`scan` or :meth:`verify` is called
    (:func:`rldskit.validation.validate_dataset` validates the episodes against the spec)."""

    def __init__(self, path: Path, info: Mapping[str, Any], spec: EpisodeSpec, spec_source: str):
        super().__init__(path)
        self.info = info
        self.spec = spec
        #: where the spec came from: ``rldskit_spec.json``, ``features.json`` or ``argument``
        self.spec_source = spec_source
        where = path / DATASET_INFO_FILE
        self.name, self.version = _name_version(info, where)
        primary = info.get("fileFormat") or "tfrecord"  # TFDS's default when a (pre-4.x) dataset names none
        alternatives = info.get("alternativeFileFormats") or []
        formats = (primary, *alternatives)
        unknown = [f for f in formats if f not in FILE_FORMATS]
        if unknown:
            raise DatasetError(f"{where}: file format {', '.join(map(repr, unknown))} is not supported "
                               f"(rldskit reads {', '.join(FILE_FORMATS)})")
        #: every record format the dataset holds, the primary (``fileFormat``) first
        self.file_formats: tuple[str, ...] = tuple(dict.fromkeys(formats))
        self._lengths: dict[str, list[int]] = {}
        self._bytes: dict[str, int] = {}
        self._templates: dict[str, str] = {}
        splits = info.get("splits")
        if not isinstance(splits, list) or not splits:
            raise DatasetError(f"{where}: 'splits' must be a non-empty list of split records")
        for s in splits:
            try:
                split = s["name"]
                lengths = [int(n) for n in s.get("shardLengths", [])]
                if not isinstance(split, str) or any(n < 0 for n in lengths):
                    raise ValueError
                self._bytes[split] = int(s.get("numBytes", 0))
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{where}: split record {json.dumps(s)[:200]} needs a 'name' and 'shardLengths' "
                                   "(a list of episode counts >= 0)") from None
            self._lengths[split] = lengths
            self._templates[split] = s.get("filepathTemplate") or FILEPATH_TEMPLATE

    @property
    def file_format(self) -> str:
        """The primary format: what :meth:`episodes` reads unless told otherwise."""
        return self.file_formats[0]

    @property
    def splits(self) -> dict[str, list[Path]]:
        """Split name -> shard paths (primary format), in shard order."""
        return {s: self.shards(s) for s in self._lengths}

    @property
    def shard_lengths(self) -> dict[str, list[int]]:
        """Split name -> episodes per shard, as ``dataset_info.json`` records them."""
        return {s: list(n) for s, n in self._lengths.items()}

    def _check_split(self, split: str) -> None:
        if split not in self._lengths:
            raise KeyError(f"{self.path}: no split {split!r}; the dataset has {', '.join(self._lengths)}")

    def _check_format(self, file_format: str | None) -> str:
        fmt = file_format or self.file_format
        if fmt not in self.file_formats:
            raise ValueError(f"{self.path}: no {fmt} shards; the dataset has {', '.join(self.file_formats)}")
        return fmt

    def shards(self, split: str, file_format: str | None = None) -> list[Path]:
        """The shard paths of ``split`` in ``file_format`` (default: the primary format)."""
        self._check_split(split)
        fmt = self._check_format(file_format)
        n = len(self._lengths[split])
        return [self.path / _format_template(self._templates[split], self.name, split, fmt, i, n) for i in range(n)]

    def _split_list(self, split: str | None) -> list[str]:
        if split is None:
            return list(self._lengths)
        self._check_split(split)
        return [split]

    def num_episodes(self, split: str | None = None) -> int:
        """Episodes in ``split`` (or all splits), from ``dataset_info.json``."""
        return sum(sum(self._lengths[s]) for s in self._split_list(split))

    def num_bytes(self, split: str | None = None) -> int:
        """Bytes of ``split`` (or all splits) as ``dataset_info.json`` records them."""
        return sum(self._bytes[s] for s in self._split_list(split))

    def _records(self, shard: Path, fmt: str) -> Iterator[bytes]:
        if fmt == "tfrecord":
            from rldskit.formats.tfrecord import read_tfrecord

            yield from read_tfrecord(shard)
        else:
            from rldskit.formats.arrayrecord import ArrayRecordShardReader

            with ArrayRecordShardReader(shard) as reader:
                yield from reader

    def episodes(self, split: str | None = None, *, file_format: str | None = None) -> Iterator[Episode]:
        """Decode the episodes of ``split`` (default: every split, in ``dataset_info.json``
        order), shard by shard, record by record. A corrupt shard raises
        ``TFRecordCorruption``/``ArrayRecordCorruption``; an undecodable record raises
        :class:`~rldskit.formats.tfexample.ExampleDecodeError` naming the file and record."""
        from rldskit.formats.tfexample import ExampleDecodeError, decode_episode

        fmt = self._check_format(file_format)
        for s in self._split_list(split):
            for shard in self.shards(s, fmt):
                for i, data in enumerate(self._records(shard, fmt)):
                    try:
                        yield decode_episode(data, self.spec)
                    except ExampleDecodeError as e:
                        raise ExampleDecodeError(f"{shard} record {i}: {e}") from None

    def num_steps(self, split: str | None = None) -> int:
        """Steps in ``split`` (or all): from ``episodes.parquet`` when the converter wrote one
        beside the shards (and pyarrow is installed), else by counting each record's steps."""
        splits = self._split_list(split)
        counted = self._index_steps()
        if counted is not None and all(s in counted for s in splits):
            return sum(counted[s] for s in splits)
        from rldskit.formats.tfexample import ExampleDecodeError, decode_features

        total = 0
        for s in splits:
            for shard in self.shards(s):
                for i, data in enumerate(self._records(shard, self.file_format)):
                    first = decode_features(data).get("steps/is_first")
                    if first is None:
                        raise ExampleDecodeError(f"{shard} record {i}: not an RLDS episode (no steps/is_first)")
                    total += len(first[1])
        return total

    def _index_steps(self) -> dict[str, int] | None:
        """Steps per split from ``episodes.parquet``, or ``None`` when it is absent or unusable
        (pyarrow missing, no ``split``/``length`` columns, episode counts differing from the shards')."""
        if not self.has_index:
            return None
        try:
            table = self.index_table(["split", "length"]).to_pydict()
        except (ImportError, OSError, ValueError, KeyError):
            return None
        steps: dict[str, int] = {}
        episodes: dict[str, int] = {}
        for s, n in zip(table["split"], table["length"]):
            steps[s] = steps.get(s, 0) + int(n)
            episodes[s] = episodes.get(s, 0) + 1
        if any(episodes.get(s, 0) != self.num_episodes(s) for s in self._lengths):
            return None
        return steps

    def index(self, split: str = "train"):  # -> rldskit.formats.step_index.StepIndex
        """The step index of ``split`` in RAM: :meth:`StepIndex.from_dataset
        <rldskit.formats.step_index.StepIndex.from_dataset>` (``DatasetError`` when the dataset has
        no step index, ``KeyError`` for an unknown split)."""
        from rldskit.formats.step_index import StepIndex

        return StepIndex.from_dataset(self, split)

    # ------------------------------------------------------------------ checking

    def scan(self, *, decode: bool = True, episodes_of: str | None = None) -> Iterator[Issue | tuple[str, Episode]]:
        """Check every shard of every format against ``dataset_info.json``, in order: yield each
        problem as an :class:`~rldskit.issues.Issue` (the codes of :meth:`verify`) and, for the
        format ``episodes_of`` (none by default), each intact decoded episode as ``(label,
        episode)``, ``label`` being ``<shard file>#<record>``. ``decode=False`` checks the framing
        and the counts only (no ``RECORD_UNDECODABLE``, no episodes)."""
        from rldskit.formats.tfexample import ExampleDecodeError, decode_episode

        for fmt in self.file_formats:
            for split in self._lengths:
                lengths = self._lengths[split]
                for k, (shard, expected) in enumerate(zip(self.shards(split, fmt), lengths)):
                    where = f"split {split}, shard {k + 1} of {len(lengths)}"
                    if not shard.is_file():
                        yield issue("SHARD_MISSING", str(shard), f"shard file is missing ({where}, {expected} episodes "
                                                                 f"expected per {DATASET_INFO_FILE})")
                        continue
                    scan = _scan_tfrecord if fmt == "tfrecord" else _scan_arrayrecord
                    intact = 0
                    damaged = False
                    for item in scan(shard):
                        if isinstance(item, Issue):
                            damaged = True
                            yield item
                            continue
                        index, offset, data = item
                        intact += 1
                        if not decode:
                            continue
                        try:
                            ep = decode_episode(data, self.spec)
                        except ExampleDecodeError as e:
                            at = f" (byte offset {offset})" if offset is not None else ""
                            yield issue("RECORD_UNDECODABLE", str(shard), f"record {index}{at} is not an episode of "
                                                                          f"{self.spec.id}: {e}")
                            continue
                        if fmt == episodes_of:
                            yield f"{shard.name}#{index}", ep
                    if not damaged and intact != expected:
                        yield issue("SHARD_COUNT_MISMATCH", str(shard),
                                    f"{intact} records, but {DATASET_INFO_FILE} says {expected} ({where})")

    def verify(self, *, decode: bool = True) -> list[Issue]:
        """Check the dataset's files against ``dataset_info.json``, in every file format:
        ``SHARD_MISSING`` (a shard file is absent), ``SHARD_CORRUPT`` (TFRecord CRC or
        truncation, with the byte offset; ArrayRecord corruption, with the record),
        ``SHARD_COUNT_MISMATCH`` (an intact shard holds another number of records than
        ``shardLengths`` says) and, with ``decode``, ``RECORD_UNDECODABLE`` (a record is not an
        episode of the spec, with its index). An empty list means every record is sound."""
        return [x for x in self.scan(decode=decode) if isinstance(x, Issue)]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.num_episodes(s)}" for s in self._lengths)
        return f"DatasetDir({str(self.path)!r}, {self.name} {self.version}, {'+'.join(self.file_formats)}, {counts})"


def _scan_tfrecord(shard: Path) -> Iterator[Issue | tuple[int, int | None, bytes]]:
    """Problems of a TFRecord shard as ``SHARD_CORRUPT`` issues (byte offset and record in the
    message), then ``(index, byte offset, data)`` of every intact record. A record whose data
    CRC fails is skipped; nothing after a broken header or a truncation can be located."""
    from rldskit.formats.tfrecord import TFRecordCorruption, read_tfrecord, verify_tfrecord

    _, problems = verify_tfrecord(shard)
    for p in problems:
        yield issue("SHARD_CORRUPT", str(shard), str(p))
    bad_records = {p.record for p in problems if p.what == "data_crc"}
    offset = 0
    try:
        for index, data in enumerate(read_tfrecord(shard, verify=False)):
            if index not in bad_records:
                yield index, offset, data
            offset += len(data) + _TFRECORD_OVERHEAD
    except TFRecordCorruption:
        return  # the broken frame verify_tfrecord reported above


def _scan_arrayrecord(shard: Path) -> Iterator[Issue | tuple[int, int | None, bytes]]:
    """Problems of an ArrayRecord shard as ``SHARD_CORRUPT`` issues, then ``(index, None,
    data)`` of every intact record (the footer index lets reading go on past a bad record)."""
    from rldskit.formats.arrayrecord import ArrayRecordCorruption, ArrayRecordShardReader

    try:
        reader = ArrayRecordShardReader(shard)
    except ArrayRecordCorruption as e:
        yield issue("SHARD_CORRUPT", str(shard), str(e))
        return
    with reader:
        for index in range(len(reader)):
            try:
                data = reader[index]
            except ArrayRecordCorruption as e:
                yield issue("SHARD_CORRUPT", str(shard), str(e))
                continue
            yield index, None, data


def open_dataset(path: str | os.PathLike, *, spec: EpisodeSpec | None = None,
                 last_step: str | None = None) -> DatasetDir:
    """Open a TFDS RLDS dataset: ``<data_dir>/<name>/<version>/``, or a folder above it that
    holds exactly one dataset. The spec is ``spec`` if given, else ``rldskit_spec.json`` (a
    dataset rldskit wrote; ``last_step``, if given, must agree with it), else ``features.json``
    with the given ``last_step`` (``"rlds"`` or ``"valid"``; Open-X datasets are ``"valid"``).
    Raises :class:`DatasetError` for a folder that is not a finished TFDS dataset and
    :class:`~rldskit.spec.SpecError` when the spec cannot be known."""
    version_dir = _find_version_dir(Path(path))
    info = _read_json(version_dir / DATASET_INFO_FILE, f"{DATASET_INFO_FILE} (written last by a finished conversion)")
    if not isinstance(info, dict):
        raise DatasetError(f"{version_dir / DATASET_INFO_FILE}: expected a JSON object")
    if spec is not None:
        return DatasetDir(version_dir, info, spec, "argument")
    own = version_dir / SPEC_FILE
    if own.is_file():
        got = EpisodeSpec.from_dict(_read_json(own, SPEC_FILE), source=str(own))
        if last_step is not None and last_step != got.last_step:
            raise SpecError(f"{own}: the dataset records last_step={got.last_step!r}; last_step={last_step!r} "
                            "contradicts it (leave it out)")
        return DatasetDir(version_dir, info, got, SPEC_FILE)
    features = version_dir / FEATURES_FILE
    obj = _read_json(features, f"{FEATURES_FILE} (the TFDS feature description)")
    name, version = _name_version(info, version_dir / DATASET_INFO_FILE)
    got = EpisodeSpec.from_tfds_features_json(obj, name=name, version=version, last_step=last_step,
                                              source=str(features))
    return DatasetDir(version_dir, info, got, FEATURES_FILE)
