"""A local copy of a converted dataset that lives in a bucket, for the readers that need local files.

ArrayRecord and Grain read local files only (random access through their own C++ readers), so
``rldskit.loaders.windows("s3://bucket/data/name/1.0.0")`` reads from a local copy that
:func:`local_copy` fills once and reuses:

* **Where.** ``$RLDSKIT_CACHE_DIR`` (default ``~/.cache/rldskit/datasets``) ``/<scheme>/<bucket>/<key>``.
* **Filled once, verified.** One paginated listing of the dataset's prefix says which files there
  are and how big; every file is downloaded into a temporary folder beside the copy, each file
  named in ``manifest.json``'s outputs is checked against the sha256 recorded there (a mismatch or a
  missing file refuses the copy and names the URL), the others against their listed size, and the
  folder is renamed into place with a record of the listing (``.rldskit-cache.json``). A copy is
  complete or absent: a killed fill leaves only a temporary folder that the next fill removes.
* **Reused.** The next call lists the prefix again (one request) and reuses the copy when names
  and sizes are unchanged, else fills a new one.
* **Two processes at once.** Filling takes an exclusive ``flock`` on ``<copy>.lock``; a second
  process waits for it, then finds the finished copy and reuses it.
* **Progress.** A one-line progress bar on stderr while filling, when stderr is a terminal.

Why a cache and not range reads: ArrayRecord's reader and Grain's sources take local paths, and a
training run reads every record each epoch, so one download per machine is the cheapest total.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rldskit import paths

__all__ = ["local_copy", "cache_root", "CACHE_DIR_ENV", "RECORD_FILE"]

#: environment variable naming the cache folder
CACHE_DIR_ENV = "RLDSKIT_CACHE_DIR"
#: the listing a finished copy was made from, inside the copy
RECORD_FILE = ".rldskit-cache.json"


def cache_root() -> Path:
    """``$RLDSKIT_CACHE_DIR``, else ``~/.cache/rldskit/datasets``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "rldskit" / "datasets"


def _copy_dir(loc: paths.Location, root: Path) -> Path:
    parts = [p for p in loc.key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise paths.PathError(f"{loc}: '.' and '..' are not dataset folder names")
    return root.joinpath(loc.scheme, loc.bucket, *parts)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _reusable(copy: Path, url: str, listing: dict[str, int]) -> bool:
    try:
        record = json.loads((copy / RECORD_FILE).read_bytes())
    except (OSError, ValueError):
        return False
    return record.get("url") == url and record.get("files") == listing


def _bar(label: str) -> Callable[[int, int], None]:
    enabled = sys.stderr.isatty()
    last = [0.0]

    def show(done: int, total: int) -> None:
        if not enabled or (done != total and time.monotonic() - last[0] < 0.1):
            return
        last[0] = time.monotonic()
        fill = int(30 * done / max(total, 1))
        sys.stderr.write(f"\r{label} [{'#' * fill}{'.' * (30 - fill)}] {done / 1e6:.1f}/{total / 1e6:.1f} MB")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def local_copy(where: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
               progress: Callable[[int, int], None] | None = None) -> Path:
    """The local folder to read the dataset at ``where`` from: ``where`` itself when it is local,
    else its verified copy in the cache (filled or reused, see the module docstring).
    ``progress(done_bytes, total_bytes)`` replaces the terminal bar. Raises
    :class:`~rldskit.paths.PathError` naming the URL when the prefix is empty or unreadable, or a
    file's sha256 or size differs from the manifest's or the listing's."""
    loc = paths.location(where)
    if not loc.remote:
        return Path(loc.key)
    url = str(loc)
    listing = dict(paths.list_files(url))
    listing.pop(RECORD_FILE, None)
    copy = _copy_dir(loc, Path(cache_dir) if cache_dir is not None else cache_root())
    if _reusable(copy, url, listing):
        return copy
    with _locked(copy.with_name(copy.name + ".lock")):
        if _reusable(copy, url, listing):  # another process filled it while we waited
            return copy
        _fill(url, listing, copy, progress or _bar(f"caching {url}"))
    return copy


def _expected_sha256(url: str, listing: dict[str, int]) -> dict[str, str]:
    """The sha256 of every output ``manifest.json`` names (none when the dataset has no manifest:
    a TFDS folder written by another tool); an output the listing lacks is refused."""
    from rldskit.formats.tfds_dir import MANIFEST_FILE

    if MANIFEST_FILE not in listing:
        return {}
    murl = paths.join(url, MANIFEST_FILE)
    try:
        manifest = json.loads(paths.read_bytes(murl))
    except ValueError as e:
        raise paths.PathError(f"{murl}: not JSON ({e})") from None
    want = {o["file"]: o["sha256"] for o in manifest.get("outputs", []) if isinstance(o, dict)
            and isinstance(o.get("file"), str) and isinstance(o.get("sha256"), str)}
    absent = sorted(set(want) - set(listing))
    if absent:
        raise paths.PathError(f"{url}: {len(absent)} file(s) manifest.json lists are not in the bucket "
                              f"(first: {absent[0]}); the dataset is incomplete")
    return want


def _fill(url: str, listing: dict[str, int], copy: Path, progress: Callable[[int, int], None]) -> None:
    want = _expected_sha256(url, listing)
    for old in copy.parent.glob(f".{copy.name}.filling-*"):  # a killed fill's leftovers
        shutil.rmtree(old, ignore_errors=True)
    tmp = copy.with_name(f".{copy.name}.filling-{os.getpid()}")
    tmp.mkdir(parents=True)
    total, done = sum(listing.values()), 0
    try:
        for rel, size in sorted(listing.items()):
            data = paths.read_bytes(paths.join(url, rel))
            if len(data) != size:
                raise paths.PathError(f"{paths.join(url, rel)}: {len(data)} bytes read, the listing said {size}: "
                                      "the object changed during the copy")
            if rel in want and hashlib.sha256(data).hexdigest() != want[rel]:
                raise paths.PathError(f"{paths.join(url, rel)}: sha256 differs from manifest.json's: the object is "
                                      "corrupt or was replaced after the conversion")
            dest = tmp.joinpath(*rel.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            done += size
            progress(done, total)
        (tmp / RECORD_FILE).write_text(json.dumps({"url": url, "files": listing}, sort_keys=True))
        if copy.exists():
            aside = copy.with_name(f".{copy.name}.old-{os.getpid()}")
            os.replace(copy, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(tmp, copy)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

