"""The path layer: one way to name, list, read and write files that live on local disk or in an
object store. Readers and writers that take a location go through here; format modules stay
bytes-only and never look at a scheme.

A location is a local path (``str`` or ``os.PathLike``), a ``file://`` URL, or a ``gs://bucket/key``
or ``s3://bucket/key`` URL. Object stores are reached through fsspec (``gcsfs``, ``s3fs``: the
``buckets`` extra), which read each store's own standard configuration, as the stores' own
clients do:

* S3: ``AWS_ENDPOINT_URL`` (a local or S3-compatible server), ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, ``~/.aws``;
* GCS: ``STORAGE_EMULATOR_HOST`` (the emulator: anonymous access), else Application Default
  Credentials.

There is no rldskit-specific credential setting, and no message rldskit writes carries a
credential: :class:`PathError` names the URL through :func:`redact` (no ``user:password@`` part,
no query string, where signed URLs carry their signature) and says what was expected.

Why fsspec and not etils.epath (which TFDS uses): pyarrow and polars, which read the step index and
statistics, take fsspec filesystems natively, and Hugging Face ``datasets``/``huggingface_hub``
are built on it; epath's bucket backends are TensorFlow's ``tf.io.gfile`` (TensorFlow would become an
import of every bucket read) or fsspec itself.

Writes are atomic on every store. A local file goes through :func:`rldskit._io.atomic_write_bytes`
(temp-then-rename in its folder). An object is written by one single-request upload
(``pipe_file``: S3 ``PutObject``, a GCS upload finalised in one call); neither store shows an object
under its name before its upload completes, so a killed writer leaves the old object or none. (A
streaming ``open(url, "wb")`` would commit the bytes written so far when an exception closes it:
nothing here streams a final object that way.)
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PathError", "REMOTE_SCHEMES", "Location", "location", "is_remote", "join", "redact", "filesystem",
           "read_bytes", "write_bytes", "exists", "is_dir", "list_files", "remove"]

#: URL schemes that name an object store
REMOTE_SCHEMES = ("gs", "s3")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


class PathError(OSError):
    """A location that cannot be used: an unknown scheme, a missing bucket or object, refused
    access, an unreachable endpoint. The message names the (redacted) URL and what was expected."""


def redact(url: str) -> str:
    """``url`` safe to print: without a ``user:password@`` part, a query string or a fragment."""
    if not _SCHEME.match(url):
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class Location:
    """A parsed location: ``scheme`` (``""`` for a local path, ``"gs"``, ``"s3"``), ``bucket``
    (``""`` locally) and ``key`` (the local path, or the object key without a leading ``/``).
    ``str(loc)`` is the canonical form: the local path, or ``scheme://bucket/key``."""

    __slots__ = ("scheme", "bucket", "key")

    def __init__(self, scheme: str, bucket: str, key: str):
        self.scheme, self.bucket, self.key = scheme, bucket, key

    @property
    def remote(self) -> bool:
        """Whether the location is in an object store."""
        return bool(self.scheme)

    @property
    def fs_path(self) -> str:
        """The path its fsspec filesystem takes (``bucket/key`` in a store)."""
        return f"{self.bucket}/{self.key}".rstrip("/") if self.remote else self.key

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}".rstrip("/") if self.remote else self.key

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.scheme, self.bucket, self.key) == (other.scheme, other.bucket,
                                                                                       other.key)

    def __hash__(self) -> int:
        return hash((self.scheme, self.bucket, self.key))


def location(where: str | os.PathLike | Location) -> Location:
    """Parse ``where``. Raises :class:`PathError` for a scheme other than ``file``, ``gs`` and
    ``s3``, a ``file://`` URL naming a host, and a bucket URL without a bucket or with credentials."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    m = _SCHEME.match(text)
    if not m:
        return Location("", "", text)
    scheme = m.group(1).lower()
    try:
        return _parse_url(text, scheme)
    except ValueError as e:  # urlsplit: a bad IPv6 host, a port that is not a number, ...
        raise PathError(f"{redact_safely(text)}: not a URL ({e})") from None


def redact_safely(text: str) -> str:
    """:func:`redact`, or the scheme alone when ``text`` does not even split as a URL."""
    try:
        return redact(text)
    except ValueError:
        m = _SCHEME.match(text)
        return f"{m.group(1)}://..." if m else "..."


def _parse_url(text: str, scheme: str) -> Location:
    parts = urlsplit(text)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise PathError(f"{redact_safely(text)}: a file:// URL names a local path (file:///abs/path), "
                            f"not host {parts.hostname!r}")
        return Location("", "", parts.path or "/")
    if scheme not in REMOTE_SCHEMES:
        raise PathError(f"{redact_safely(text)}: unknown URL scheme {scheme!r}; expected a local path, file://, gs:// or s3://")
    bucket = parts.hostname or ""
    if not bucket or parts.username or parts.password or parts.port:
        raise PathError(f"{redact_safely(text)}: expected {scheme}://BUCKET/KEY (a bucket name, no credentials or port)")
    return Location(scheme, bucket, re.sub(r"/{2,}", "/", parts.path).lstrip("/"))


def is_remote(where: str | os.PathLike | Location) -> bool:
    """Whether ``where`` names an object or prefix in a store (``gs://``, ``s3://``)."""
    return location(where).remote


def join(where: str | os.PathLike | Location, *names: str) -> str:
    """``where`` joined with ``names``: a local path, or a URL with ``/`` between the parts."""
    loc = location(where)
    if not loc.remote:
        return str(Path(loc.key, *names))
    return str(Location(loc.scheme, loc.bucket, posixpath.join(loc.key, *names) if names else loc.key))


_FILESYSTEMS: dict[str, Any] = {}


def filesystem(where: str | os.PathLike | Location) -> tuple[Any, str]:
    """The fsspec filesystem of ``where`` and the path it takes. One instance per store and
    process, made on first use (it reads the store's configuration then); :func:`reset` forgets it."""
    loc = location(where)
    if not loc.remote:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), loc.key
    fs = _FILESYSTEMS.get(loc.scheme)
    if fs is None:
        fs = _FILESYSTEMS[loc.scheme] = _make_filesystem(loc.scheme)
    return fs, loc.fs_path


def reset() -> None:
    """Forget the filesystems made so far (after the store's configuration changed)."""
    _FILESYSTEMS.clear()
    for mod, cls in (("s3fs", "S3FileSystem"), ("gcsfs", "GCSFileSystem")):
        try:
            getattr(__import__(mod), cls).clear_instance_cache()
        except (ImportError, AttributeError):
            pass


def _make_filesystem(scheme: str) -> Any:
    try:
        import fsspec

        if scheme == "gs":
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                # the emulator speaks JSON over HTTP only: gcsfs's core class, anonymous. (The class
                # fsspec registers probes each bucket for hierarchical namespaces over gRPC, ~60 s
                # per bucket against an emulator, unless GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false.)
                from gcsfs.core import GCSFileSystem

                return GCSFileSystem(token="anon", skip_instance_cache=True)
            import gcsfs  # noqa: F401 - registers "gcs"; named in the error when missing

            return fsspec.filesystem("gcs", skip_instance_cache=True)
        import s3fs  # noqa: F401 - registers "s3"; named in the error when missing

        return fsspec.filesystem("s3", skip_instance_cache=True)
    except ImportError as e:
        raise PathError(f"{scheme}:// needs {'gcsfs' if scheme == 'gs' else 's3fs'}: pip install 'rldskit[buckets]' "
                        f"({e})") from None


def _fail(loc: Location, doing: str, e: BaseException) -> PathError:
    """A :class:`PathError` for ``e``, raised while ``doing`` on ``loc``: the URL, what went wrong
    in words, then the store's first line (the clients put no credentials in theirs)."""
    if isinstance(e, PathError):
        return e
    words = ((FileNotFoundError, "does not exist"), (PermissionError, "access refused"),
             (IsADirectoryError, "is a folder"), (NotADirectoryError, "is not a folder"))
    reason = next((w for k, w in words if isinstance(e, k)), None)
    text = str(e).strip()
    detail = text.splitlines()[0][:300] if text else type(e).__name__
    head = f"{loc}: cannot {doing}"
    return PathError(f"{head}: {reason} ({detail})" if reason else f"{head}: {type(e).__name__}: {detail}")


def read_bytes(where: str | os.PathLike | Location) -> bytes:
    """The whole file or object. :class:`PathError` (naming the URL) when it cannot be read."""
    loc = location(where)
    try:
        if not loc.remote:
            return Path(loc.key).read_bytes()
        fs, path = filesystem(loc)
        return fs.cat_file(path)
    except Exception as e:  # noqa: BLE001 - OSError locally; the clients raise OSError, botocore, aiohttp errors
        raise _fail(loc, "read", e) from None


def write_bytes(where: str | os.PathLike | Location, data: bytes) -> None:
    """Write ``data`` atomically: a reader sees the old content or all of the new, never a part
    (see the module docstring). Local parent folders are created. :class:`PathError` on failure."""
    loc = location(where)
    try:
        if not loc.remote:
            from rldskit._io import atomic_write_bytes

            Path(loc.key).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(loc.key, bytes(data))
            return
        fs, path = filesystem(loc)
        fs.pipe_file(path, bytes(data))  # one request: the object appears complete or not at all
        fs.invalidate_cache(posixpath.dirname(path))
    except Exception as e:  # noqa: BLE001
        raise _fail(loc, "write", e) from None


def _look_up(where: str | os.PathLike | Location, test: str) -> bool:
    """``os.path.<test>`` of a local path, the filesystem's ``<test>`` in a store (``exists`` or
    ``isdir``, which fsspec and os.path both name so)."""
    loc = location(where)
    if not loc.remote:
        return getattr(os.path, test)(loc.key)
    try:
        fs, path = filesystem(loc)
        return bool(getattr(fs, test)(path))
    except Exception as e:  # noqa: BLE001
        raise _fail(loc, "look up", e) from None


def exists(where: str | os.PathLike | Location) -> bool:
    """Whether a file/object or a folder/prefix is there. :class:`PathError` when the store cannot
    be asked (unreachable, refused)."""
    return _look_up(where, "exists")


def is_dir(where: str | os.PathLike | Location) -> bool:
    """Whether ``where`` is a folder (locally) or a prefix that holds objects (in a store)."""
    return _look_up(where, "isdir")


def list_files(where: str | os.PathLike | Location) -> list[tuple[str, int]]:
    """Every file under ``where``, recursively: ``(path relative to where, size in bytes)``,
    sorted. In a store this is one paginated listing of the prefix, with no request per object.
    :class:`PathError` when nothing is there (saying whether the bucket itself is missing) or it
    cannot be listed."""
    loc = location(where)
    if not loc.remote:
        root = Path(loc.key)
        if not root.is_dir():
            raise _fail(loc, "list", NotADirectoryError(loc.key) if root.exists() else FileNotFoundError(loc.key))
        out = []
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath, f)
                try:
                    out.append((p.relative_to(root).as_posix(), p.stat().st_size))
                except OSError:
                    continue  # gone while listing
        return sorted(out)
    try:
        fs, path = filesystem(loc)
        found = fs.find(path, detail=True, withdirs=False)
        if not found:
            missing = "no such bucket" if not fs.exists(loc.bucket) else "no objects under this prefix"
            raise FileNotFoundError(missing)
    except Exception as e:  # noqa: BLE001
        raise _fail(loc, "list", e) from None
    prefix = path.rstrip("/") + "/"
    return sorted((name[len(prefix):], int(info.get("size") or 0)) for name, info in found.items()
                  if name.startswith(prefix))


def remove(where: str | os.PathLike | Location, *, recursive: bool = False) -> None:
    """Delete a file/object (with ``recursive``, a folder/prefix and everything under it). Missing
    is not an error."""
    loc = location(where)
    try:
        if not loc.remote:
            p = Path(loc.key)
            if p.is_dir() and recursive:
                import shutil

                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            return
        fs, path = filesystem(loc)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)
            fs.invalidate_cache(posixpath.dirname(path))
    except Exception as e:  # noqa: BLE001
        raise _fail(loc, "delete", e) from None
