"""Signed policy bundles: what a trainer export becomes before it is shipped to a robot. Standard
library, numpy (through :mod:`edge_runtime.policy`) and ``cryptography`` only.

**A bundle** is a folder (or a zip of that folder, :func:`pack_zip`)::

    edge_manifest.json        what is in the bundle, and how to check it (the signed document)
    edge_manifest.sig         {"algorithm": "ed25519", "key_id": ..., "signature": base64}
    policy/model.safetensors  copied from the export
    policy/policy.json        copied from the export
    safety.json               the safety configuration (action bounds, max step-to-step change)
    evidence/<name>.json      optional: why this policy may run (e.g. proof_of_learning.json)

``edge_manifest.json`` is ``{"format": "rldskit-edge-bundle", "format_version": 1, "name",
"version", "compat": [schema ids, e.g. "pi5_donkey.v1"], "backend", "created_at" (ISO 8601 UTC),
"files": {relpath: {"sha256", "size"}}, "evidence": {name: {small scalar summary}}, "safety":
{...the content of safety.json...}}``. ``files`` lists every file of the bundle except the manifest
and the signature; a bundle holding anything else is refused. The signature is an Ed25519
signature over the exact bytes of ``edge_manifest.json``; the manifest pins every other byte.

**Verification** (:func:`verify_bundle`), in this order: the manifest parses and has the format;
the signature (unless ``allow_unsigned``) is by a trusted key (an unknown key is refused naming its
key id) and valid; ``compat``, if given, is in the manifest's ``compat``; every listed file is a
regular file of the listed size and sha256; nothing unlisted is present; ``safety.json`` equals the
manifest's ``safety``; the policy loads (:meth:`Policy.load`). A ``.zip`` is first extracted with
:func:`extract_zip` (every zip-slip / symlink / bomb guard) into a private temporary folder, which
is verified and removed before returning (``VerifiedBundle.path`` is then the zip). Every failure is
a :class:`BundleError` naming the file and what was expected.

Verification does not run the policy: a policy that outputs NaN verifies; the slot health check
(:func:`edge_runtime.slots.health_check`) is what refuses it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic_io import atomic_write, fsync_dir, write_new_file
from .policy import Policy, PolicyError
from .safe_extract import (ZIP_READ_ERRORS, ExpansionBudget, create_member_file, exceeds_ratio, name_problem,
                           path_clashes, zip_entry_kind, zip_entry_mode, zip_entry_problem)

__all__ = ["BundleError", "VerifiedBundle", "build_bundle", "pack_zip", "extract_zip", "sign_bundle",
           "verify_bundle", "generate_keypair", "load_private_key", "load_public_key", "key_id", "trusted_key_set",
           "default_safety", "action_names", "safety_bounds", "manifest_sha256", "json_bytes", "MANIFEST",
           "SIGNATURE", "FORMAT", "FORMAT_VERSION", "MAX_ZIP_ENTRIES", "MAX_ZIP_BYTES", "MAX_ZIP_RATIO"]

FORMAT = "rldskit-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "edge_manifest.json"
SIGNATURE = "edge_manifest.sig"
POLICY_DIR = "policy"
SAFETY = "safety.json"
REQUIRED = (f"{POLICY_DIR}/model.safetensors", f"{POLICY_DIR}/policy.json", SAFETY)
DEFAULT_MAX_DELTA = 0.25

#: extract_zip limits: entries, total uncompressed bytes, and the per-entry ratio
#: uncompressed / compressed (checked for entries of at least ``_RATIO_FLOOR`` bytes: smaller ones
#: cannot make a bomb, and a tiny all-zero file legitimately compresses more than 200x).
MAX_ZIP_ENTRIES = 1000
MAX_ZIP_BYTES = 2 * 2**30
MAX_ZIP_RATIO = 200
_RATIO_FLOOR = 64 * 2**10
_MAX_MANIFEST = 16 * 2**20
_MAX_SIG = 64 * 2**10
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_EVIDENCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# what a corrupt zip can make zipfile raise (the guards' own list)
_ZIP_ERRORS = ZIP_READ_ERRORS
# how a bundle refusal words each name problem of edge_runtime.safe_extract.name_problem
_NAME_WORDS = {"empty": "an empty name or a NUL character", "nul": "an empty name or a NUL character",
               "not_utf8": "a name that is not valid UTF-8", "control": "a control character",
               "backslash": "a backslash", "absolute": "an absolute path", "drive": "a drive letter",
               "traversal": "a '..' component", "noncanonical": "an empty or '.' component"}


class BundleError(ValueError):
    """A bundle (or key, or zip) that is refused; the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class VerifiedBundle:
    """The result of :func:`verify_bundle`. ``key_id`` is the verified signer (``None`` when the
    bundle was accepted unsigned); ``manifest_sha256`` is the sha256 of ``edge_manifest.json``."""

    path: Path
    manifest: dict[str, Any]
    key_id: str | None
    signed: bool
    manifest_sha256: str

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def slot_id(self) -> str:
        """The id of the slot this bundle installs into: ``<version>-<manifest sha256[:12]>``."""
        return f"{self.manifest['version']}-{self.manifest_sha256[:12]}"


# =========================================================================== small file helpers


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the edge runtime writes its JSON documents (manifest, signature, safety, evidence,
    slot state): 2-space indent, sorted keys, a final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_new_file(dst, src.read_bytes())


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# =========================================================================== building


def action_names(policy_doc: Mapping[str, Any]) -> list[str]:
    """The action names of a ``policy.json`` (``outputs.action.names``, else ``action[i]``)."""
    arch = policy_doc.get("architecture") or {}
    action = (policy_doc.get("outputs") or {}).get("action") or {}
    a = int(arch.get("action_dim") or (action.get("shape") or [0, 0])[-1])
    return [str(n) for n in (action.get("names") or [])] or [f"action[{i}]" for i in range(a)]


def default_safety(policy_doc: Mapping[str, Any]) -> dict[str, Any]:
    """The safety configuration derived from ``policy.json`` -- the config of
    :class:`edge_runtime.safety.SafetyHead`: ``{"bounds": {name: [lo, hi]}`` (outputs.action.bounds;
    empty when the export declares none), ``"max_delta": {name: 0.25}}`` (the largest change of a
    command between two control ticks, in action units; enforced by the safety head, not by the
    health check). Names are :func:`action_names`."""
    names = action_names(policy_doc)
    bounds = ((policy_doc.get("outputs") or {}).get("action") or {}).get("bounds") or []
    return {"bounds": {n: [float(lo), float(hi)] for n, (lo, hi) in zip(names, bounds)},
            "max_delta": {n: DEFAULT_MAX_DELTA for n in names}}


def safety_bounds(safety: Mapping[str, Any], names: list[str], where: str = "safety") -> tuple[Any, Any]:
    """``(lo, hi)`` float64 arrays, one per action, from ``safety["bounds"]`` (``{name: [lo, hi]}``
    or a list aligned with ``names``; an absent name is unbounded)."""
    import numpy as np

    lo, hi = np.full(len(names), -np.inf), np.full(len(names), np.inf)
    b = safety.get("bounds")
    if b is None:
        return lo, hi
    if isinstance(b, Mapping):
        items = list(b.items())
        for n, _ in items:
            if n not in names:
                raise BundleError(f"{where}: bounds names {n!r}, which is not an action name ({names})")
        pairs = [(names.index(n), v) for n, v in items]
    elif isinstance(b, list) and len(b) == len(names):
        pairs = list(enumerate(b))
    else:
        raise BundleError(f"{where}: bounds must be {{action name: [lo, hi]}} or a list of {len(names)} pairs")
    for i, v in pairs:
        if v is None:
            continue
        ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                           and not math.isnan(x) for x in v) and v[0] <= v[1])
        if not ok:
            raise BundleError(f"{where}: bounds[{names[i]!r}] must be [lo, hi] numbers with lo <= hi, got {v!r}")
        lo[i], hi[i] = v
    return lo, hi


def _check_safety(safety: Any, names: list[str], where: str) -> None:
    """Refuse a safety config the robot's safety head would refuse (checked with
    :class:`edge_runtime.safety.SafetyHead` itself when that module is present)."""
    if not isinstance(safety, Mapping):
        raise BundleError(f"{where}: safety must be a JSON object, got {type(safety).__name__}")
    safety_bounds(safety, names, f"{where}: safety")
    try:
        from .safety import SafetyConfigError, SafetyHead
    except ImportError:  # pragma: no cover - a runtime without the safety head
        return
    try:
        SafetyHead(safety, names)
    except SafetyConfigError as e:
        raise BundleError(f"{where}: {e}") from None


def _summary(doc: Any) -> dict[str, Any]:
    """The small scalar part of an evidence document (what the manifest carries)."""
    if not isinstance(doc, Mapping):
        return {}
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if len(out) >= 20:
            break
        if isinstance(v, bool) or v is None or (isinstance(v, int) and not isinstance(v, bool)):
            out[k] = v
        elif isinstance(v, float) and math.isfinite(v):
            out[k] = v
        elif isinstance(v, str) and len(v) <= 200:
            out[k] = v
    if isinstance(doc.get("failures"), list):
        out["failures"] = len(doc["failures"])
    return out


def build_bundle(export_dir: str | os.PathLike, out_dir: str | os.PathLike, *, version: str, compat: list[str],
                 name: str | None = None, backend: str = "numpy", evidence: Mapping[str, Any] | None = None,
                 safety: Mapping[str, Any] | None = None) -> Path:
    """Build an (unsigned) bundle folder at ``out_dir`` from a trainer export; returns it.

    ``version``: letters, digits and ``._+-`` (it names the slot on the robot); ``compat``: the
    schema ids the policy may drive (e.g. ``["pi5_donkey.v1"]``); ``name``: default the dataset
    name in ``policy.json``, else the export folder's name; ``evidence``: ``{name: JSON document}``
    written as ``evidence/<name>.json`` -- ``proof_of_learning`` is added from
    ``proof_of_learning.json`` in the export folder or its run folder (the export's parent) when
    present and not given; ``safety``: keys overriding :func:`default_safety` (checked against the safety head's rules).

    The export must load with :meth:`Policy.load`. Built in a temporary sibling folder and renamed
    into place; an existing ``out_dir`` is replaced only if it is empty or a bundle (has a
    manifest), else refused."""
    export = Path(export_dir)
    out = Path(out_dir)
    try:
        pol = Policy.load(export)
    except PolicyError as e:
        raise BundleError(f"{export}: not a loadable policy export: {e}") from None
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise BundleError(f"version {version!r}: expected 1-64 letters, digits or '._+-' (it names the slot)")
    if isinstance(compat, str) or not compat or not all(isinstance(c, str) and c for c in compat):
        raise BundleError(f"compat {compat!r}: expected a non-empty list of schema ids, e.g. ['pi5_donkey.v1']")
    policy_doc = pol.policy
    if name is None:
        name = str((policy_doc.get("dataset") or {}).get("name") or export.resolve().name)
    if not isinstance(backend, str) or not backend:
        raise BundleError(f"backend {backend!r}: expected a non-empty string such as 'numpy'")

    safety_doc = default_safety(policy_doc)
    if safety is not None:
        if not isinstance(safety, Mapping):
            raise BundleError(f"safety: expected a JSON object, got {type(safety).__name__}")
        safety_doc.update(dict(safety))
    names = action_names(policy_doc)
    if len(names) != pol.A:
        raise BundleError(f"{export / 'policy.json'}: outputs.action.names lists {len(names)} actions; "
                          f"the policy outputs {pol.A}")
    _check_safety(safety_doc, names, "safety")

    docs: dict[str, Any] = dict(evidence or {})
    if "proof_of_learning" not in docs:
        for cand in (export / "proof_of_learning.json", export.parent / "proof_of_learning.json"):
            if cand.is_file():
                try:
                    docs["proof_of_learning"] = json.loads(cand.read_text())
                except (OSError, ValueError) as e:
                    raise BundleError(f"{cand}: not readable JSON: {e}") from None
                break
    for k in docs:
        if not isinstance(k, str) or not _EVIDENCE_RE.match(k):
            raise BundleError(f"evidence name {k!r}: expected letters, digits or '._-' (it names evidence/<name>.json)")

    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
            raise BundleError(f"{out}: exists and is not a bundle folder; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / POLICY_DIR).mkdir()
        _copy_file(export / "model.safetensors", tmp / POLICY_DIR / "model.safetensors")
        _copy_file(export / "policy.json", tmp / POLICY_DIR / "policy.json")
        write_new_file(tmp / SAFETY, json_bytes(safety_doc))
        if docs:
            (tmp / "evidence").mkdir()
            for k, doc in sorted(docs.items()):
                try:
                    data = json_bytes(doc)
                except (TypeError, ValueError) as e:
                    raise BundleError(f"evidence {k!r}: not JSON-serialisable: {e}") from None
                write_new_file(tmp / "evidence" / f"{k}.json", data)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                sha, size = _sha256_file(p)
                files[p.relative_to(tmp).as_posix()] = {"sha256": sha, "size": size}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "version": version,
                    "compat": list(compat), "backend": backend, "created_at": _now_iso(), "files": files,
                    "evidence": {k: {"file": f"evidence/{k}.json", **_summary(v)} for k, v in sorted(docs.items())},
                    "safety": safety_doc}
        write_new_file(tmp / MANIFEST, json_bytes(manifest))
        for d in (tmp / POLICY_DIR, tmp / "evidence", tmp):
            if d.is_dir():
                fsync_dir(d)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# =========================================================================== zip


def _zip_bytes(entries: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, entries[name], compresslevel=6)
    return buf.getvalue()


def _bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(bundle_dir):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                raise BundleError(f"{p}: a symlink in a bundle folder; bundles hold regular files only")
        for n in filenames:
            p = Path(dirpath) / n
            if not p.is_file():
                raise BundleError(f"{p}: not a regular file")
            out[p.relative_to(bundle_dir).as_posix()] = p.read_bytes()
    return out


def pack_zip(bundle_dir: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip a bundle folder deterministically (names sorted, fixed 1980-01-01 timestamps, mode 0644,
    deflate level 6: the same folder always gives the same bytes); written to a temporary sibling
    and renamed. The folder's integrity (not its signature) is verified first. Returns ``zip_path``."""
    src, dst = Path(bundle_dir), Path(zip_path)
    verify_bundle(src, allow_unsigned=True, _check_sig=False)  # never ship a damaged bundle
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, _zip_bytes(_bundle_files(src)))
    return dst


def _safe_name(name: str, where: str) -> None:
    """Refuse a name :func:`edge_runtime.safe_extract.name_problem` refuses (a trailing ``/``, a
    directory entry, is allowed)."""
    code = name_problem(name, directory=True)
    if code:
        raise BundleError(f"{where}: entry {name!r} has {_NAME_WORDS[code]}; refusing to extract")


def _check_entries(zf: zipfile.ZipFile, where: str, *, max_entries: int, max_bytes: int,
                   max_ratio: float) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise BundleError(f"{where}: {len(infos)} entries; at most {max_entries} are accepted")
    seen: set[str] = set()
    dirs: set[str] = set()
    files: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _safe_name(name, where)
        if name in seen:
            raise BundleError(f"{where}: duplicate entry {name!r}")
        seen.add(name)
        kind = zip_entry_kind(info)
        if kind == "symlink":
            raise BundleError(f"{where}: entry {name!r} is a symlink; bundles hold regular files only")
        if kind not in ("file", "dir"):
            raise BundleError(f"{where}: entry {name!r} is a special file (mode {oct(zip_entry_mode(info))}); "
                              "refusing it")
        problem = zip_entry_problem(info)
        if problem == "encrypted":
            raise BundleError(f"{where}: entry {name!r} is encrypted")
        if problem == "compression":
            raise BundleError(f"{where}: entry {name!r} uses compression method {info.compress_type}; "
                              "only stored and deflate are accepted")
        if problem == "negative_size":
            raise BundleError(f"{where}: entry {name!r} declares a negative size")
        if kind == "dir":
            if info.file_size:
                raise BundleError(f"{where}: directory entry {name!r} has data")
            dirs.add(name.rstrip("/"))
            continue
        total += info.file_size
        if total > max_bytes:
            raise BundleError(f"{where}: entries expand to more than {max_bytes} bytes; refusing (zip bomb?)")
        if exceeds_ratio(info.file_size, info.compress_size, max_ratio, _RATIO_FLOOR):
            raise BundleError(f"{where}: entry {name!r} expands {info.file_size} bytes from {info.compress_size} "
                              f"(ratio above {max_ratio}); refusing (zip bomb?)")
        files.add(name)
    for file, other in path_clashes(files, dirs)[:1]:
        if other == file:
            raise BundleError(f"{where}: {other!r} is both a file and a directory")
        raise BundleError(f"{where}: entry {other!r} lies under {file!r}, which is a file")
    return infos


def extract_zip(zip_path: str | os.PathLike, dest_dir: str | os.PathLike, *, max_entries: int = MAX_ZIP_ENTRIES,
                max_bytes: int = MAX_ZIP_BYTES, max_ratio: float = MAX_ZIP_RATIO) -> Path:
    """Extract a zip safely into ``dest_dir`` (which must not exist, or be an empty folder).

    Refused before anything is written, by the rules of :mod:`edge_runtime.safe_extract` (the ones
    ``rldskit unpack`` applies too): absolute names, drive letters, backslashes, control
    characters, ``..`` or empty components, symlinks and device/FIFO/socket entries, duplicate
    names, a file that is also a directory (or lies under a file), encrypted entries, compression
    other than stored/deflate, more than ``max_entries`` entries, more than ``max_bytes``
    uncompressed bytes in total, an entry of 64 KiB or more expanding more than ``max_ratio`` times.
    A truncated or corrupt zip (bad headers, CRC, deflate stream) is a :class:`BundleError`.
    Extraction goes to a temporary sibling folder (files fsynced) renamed to ``dest_dir`` on
    success; on failure nothing is left."""
    src, dest = Path(zip_path), Path(dest_dir)
    where = str(src)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise BundleError(f"{dest}: exists and is not an empty folder; refusing to extract over it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(src) as zf:
                infos = _check_entries(zf, where, max_entries=max_entries, max_bytes=max_bytes, max_ratio=max_ratio)
                written = ExpansionBudget(max_bytes)
                for info in infos:
                    target = tmp.joinpath(*info.filename.rstrip("/").split("/"))
                    if zip_entry_kind(info) == "dir":
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fd = create_member_file(target, 0o644)
                    with os.fdopen(fd, "wb") as out, zf.open(info) as f:
                        n = 0
                        while True:
                            b = f.read(_CHUNK)
                            if not b:
                                break
                            n += len(b)
                            over = written.add(len(b))
                            if n > info.file_size or over:
                                raise BundleError(f"{where}: entry {info.filename!r} expands beyond its declared "
                                                  f"{info.file_size} bytes")
                            out.write(b)
                        if n != info.file_size:
                            raise BundleError(f"{where}: entry {info.filename!r} holds {n} bytes; "
                                              f"it declares {info.file_size}")
                        out.flush()
                        os.fsync(out.fileno())
        except BundleError:
            raise
        except _ZIP_ERRORS as e:
            raise BundleError(f"{where}: not a readable zip (truncated or corrupt?): {type(e).__name__}: {e}") from None
        for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            fsync_dir(d)
        fsync_dir(tmp)
        os.rename(tmp, dest)  # onto a missing or empty folder
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# =========================================================================== keys


def generate_keypair(out_prefix: str | os.PathLike) -> tuple[Path, Path]:
    """A new Ed25519 key pair: ``<prefix>.key`` (PKCS8 PEM, mode 0600) and ``<prefix>.pub``
    (SubjectPublicKeyInfo PEM). Refuses to overwrite an existing key file."""
    prefix = Path(out_prefix)
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise BundleError(f"{p}: exists; refusing to overwrite a key")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(key_path, priv, mode=0o600)
    atomic_write(pub_path, pub, mode=0o644)
    return key_path, pub_path


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BundleError(f"{p}: not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{p}: a {type(key).__name__}; expected an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise BundleError(f"{p}: not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{p}: a {type(key).__name__}; expected an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


TrustedKeys = Any  # list of paths / keys, {name: key}, a folder of *.pub, one .pub, or None


def trusted_key_set(trusted_keys: TrustedKeys) -> dict[str, Ed25519PublicKey]:
    """``{key_id: key}`` from: ``None``; a folder (every ``*.pub`` in it); one ``.pub`` path; a
    mapping whose values are keys or paths (its keys are ignored: ids are always recomputed); an
    iterable of keys or paths."""
    if trusted_keys is None:
        return {}
    if isinstance(trusted_keys, (str, os.PathLike)):
        p = Path(trusted_keys)
        if p.is_dir():
            items: Iterable[Any] = sorted(p.glob("*.pub"))
        elif p.exists():
            items = [p]
        else:
            raise BundleError(f"{p}: trusted keys: no such file or folder")
    elif isinstance(trusted_keys, Mapping):
        items = list(trusted_keys.values())
    elif isinstance(trusted_keys, Ed25519PublicKey):
        items = [trusted_keys]
    else:
        items = list(trusted_keys)
    out: dict[str, Ed25519PublicKey] = {}
    for item in items:
        if isinstance(item, Ed25519PrivateKey):
            item = item.public_key()
        if not isinstance(item, Ed25519PublicKey):
            item = load_public_key(item)
        out[key_id(item)] = item
    return out


# =========================================================================== signing


def _sign_doc(manifest_bytes: bytes, key: Ed25519PrivateKey) -> dict[str, str]:
    return {"algorithm": "ed25519", "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}


def _read_zip_entries(path: Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = _check_entries(zf, str(path), max_entries=MAX_ZIP_ENTRIES, max_bytes=MAX_ZIP_BYTES,
                                   max_ratio=MAX_ZIP_RATIO)
            return {i.filename: zf.read(i) for i in infos if not i.filename.endswith("/")}
    except BundleError:
        raise
    except _ZIP_ERRORS as e:
        raise BundleError(f"{path}: not a readable zip (truncated or corrupt?): {type(e).__name__}: {e}") from None


def sign_bundle(bundle: str | os.PathLike, key_path: str | os.PathLike) -> dict[str, str]:
    """Sign a bundle folder or zip with the Ed25519 key at ``key_path``: writes ``edge_manifest.sig``
    (replacing any previous signature; a zip is rewritten deterministically, atomically). The
    bundle's integrity is checked first (a tampered bundle is never signed). Returns the signature
    document ``{"algorithm", "key_id", "signature"}``."""
    p = Path(bundle)
    key = load_private_key(key_path)
    verify_bundle(p, allow_unsigned=True, _check_sig=False)
    if p.is_dir():
        doc = _sign_doc((p / MANIFEST).read_bytes(), key)
        atomic_write(p / SIGNATURE, json_bytes(doc))
        return doc
    entries = _read_zip_entries(p)
    entries.pop(SIGNATURE, None)
    doc = _sign_doc(entries[MANIFEST], key)
    entries[SIGNATURE] = json_bytes(doc)
    atomic_write(p, _zip_bytes(entries))
    return doc


# =========================================================================== verification


def _load_manifest(root: Path) -> tuple[bytes, dict[str, Any]]:
    mp = root / MANIFEST
    if mp.is_symlink() or not mp.is_file():
        raise BundleError(f"{mp}: missing (or not a regular file); expected the bundle manifest")
    data = mp.read_bytes()
    if len(data) > _MAX_MANIFEST:
        raise BundleError(f"{mp}: {len(data)} bytes; a manifest is at most {_MAX_MANIFEST}")
    try:
        m = json.loads(data)
    except ValueError as e:
        raise BundleError(f"{mp}: not JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{mp}: format is {m.get('format') if isinstance(m, dict) else None!r}; expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mp}: format_version {m.get('format_version')!r}; this runtime reads {FORMAT_VERSION}")
    if not isinstance(m.get("version"), str) or not _VERSION_RE.match(m["version"]):
        raise BundleError(f"{mp}: version {m.get('version')!r} is not 1-64 letters, digits or '._+-'")
    compat = m.get("compat")
    if not isinstance(compat, list) or not all(isinstance(c, str) for c in compat):
        raise BundleError(f"{mp}: compat must be a list of schema ids, got {compat!r:.200}")
    files = m.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{mp}: files must be an object {{relpath: {{sha256, size}}}}")
    for rel, info in files.items():
        try:
            _safe_name(rel, str(mp))
        except BundleError as e:
            raise BundleError(f"{mp}: files lists {rel!r}, which is not a safe relative path ({e})") from None
        if rel in (MANIFEST, SIGNATURE) or rel.endswith("/"):
            raise BundleError(f"{mp}: files must not list {rel!r}")
        if (not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or not _HEX64.match(info["sha256"])
                or isinstance(info.get("size"), bool) or not isinstance(info.get("size"), int) or info["size"] < 0):
            raise BundleError(f"{mp}: files[{rel!r}] must be {{'sha256': 64 hex digits, 'size': bytes}}, "
                              f"got {info!r:.200}")
    for rel in REQUIRED:
        if rel not in files:
            raise BundleError(f"{mp}: files does not list {rel!r}; every bundle holds it")
    if not isinstance(m.get("safety"), dict):
        raise BundleError(f"{mp}: safety must be a JSON object (the safety head's config)")
    return data, m


def _check_signature(root: Path, manifest_bytes: bytes, keys: dict[str, Ed25519PublicKey],
                     allow_unsigned: bool) -> str | None:
    sp = root / SIGNATURE
    if not sp.exists() and not sp.is_symlink():
        if allow_unsigned:
            return None
        raise BundleError(f"{sp}: missing; the bundle is unsigned (pass allow_unsigned=True to accept it)")
    if not keys:
        if allow_unsigned:
            return None  # signed, but nothing to check it against: accepted as unsigned
        raise BundleError(f"{sp}: no trusted keys were given to check the signature against")
    if sp.is_symlink() or not sp.is_file():
        raise BundleError(f"{sp}: not a regular file")
    data = sp.read_bytes()
    if len(data) > _MAX_SIG:
        raise BundleError(f"{sp}: {len(data)} bytes; a signature file is at most {_MAX_SIG}")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise BundleError(f"{sp}: not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key_id"), str) or not isinstance(doc.get("signature"), str):
        raise BundleError(f"{sp}: expected {{'algorithm': 'ed25519', 'key_id': str, 'signature': base64}}")
    if doc.get("algorithm") != "ed25519":
        raise BundleError(f"{sp}: algorithm {doc.get('algorithm')!r}; expected 'ed25519'")
    kid = doc["key_id"]
    if kid not in keys:
        raise BundleError(f"{sp}: signed by key {kid!r:.40}, which is not trusted (trusted: {sorted(keys)})")
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BundleError(f"{sp}: signature is not base64: {e}") from None
    try:
        keys[kid].verify(sig, manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{sp}: the signature by key {kid!r} does not match {MANIFEST} "
                          "(tampered manifest, or a signature made with another key)") from None
    return kid


def _check_files(root: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    for rel in sorted(files):
        want = files[rel]
        p = root.joinpath(*rel.split("/"))
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise BundleError(f"{p}: missing; {MANIFEST} lists {rel!r} ({want['size']} bytes)") from None
        for parent in p.relative_to(root).parents:
            if parent != Path(".") and (root / parent).is_symlink():
                raise BundleError(f"{root / parent}: a symlink; bundles hold regular files only")
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{p}: not a regular file; {MANIFEST} lists {rel!r} as one")
        if st.st_size != want["size"]:
            raise BundleError(f"{p}: {st.st_size} bytes; {MANIFEST} says {want['size']}")
        sha, size = _sha256_file(p)
        if size != want["size"] or sha != want["sha256"]:
            raise BundleError(f"{p}: sha256 {sha}; {MANIFEST} says {want['sha256']} (modified or corrupt)")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            if (Path(dirpath) / n).is_symlink():
                raise BundleError(f"{Path(dirpath) / n}: a symlink; bundles hold regular files only")
        for n in filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if rel not in files and rel not in (MANIFEST, SIGNATURE):
                raise BundleError(f"{p}: not listed in {MANIFEST}; a bundle holds nothing else")


def verify_bundle(path: str | os.PathLike, *, trusted_keys: TrustedKeys = None, allow_unsigned: bool = False,
                  compat: str | None = None, _check_sig: bool = True) -> VerifiedBundle:
    """Verify a bundle folder or ``.zip`` (see the module docstring for the checks and their
    order). ``trusted_keys``: see :func:`trusted_key_set`. ``allow_unsigned``: accept a bundle
    without a signature (a signature that is present is still checked when trusted keys are given;
    with no trusted keys it is ignored and the bundle counts as unsigned). ``compat``: a schema id
    the bundle must declare. A zip is extracted into a temporary folder that is removed before
    returning. Raises :class:`BundleError`."""
    p = Path(path)
    if p.is_file():
        tmpd = Path(tempfile.mkdtemp(prefix="rldskit-edge-verify-"))
        try:
            vb = verify_bundle(extract_zip(p, tmpd / "bundle"), trusted_keys=trusted_keys,
                               allow_unsigned=allow_unsigned, compat=compat, _check_sig=_check_sig)
        finally:
            shutil.rmtree(tmpd, ignore_errors=True)
        return dataclasses.replace(vb, path=p)
    if not p.is_dir():
        raise BundleError(f"{p}: no such bundle folder or zip")
    keys = trusted_key_set(trusted_keys) if _check_sig else {}
    data, m = _load_manifest(p)
    kid = _check_signature(p, data, keys, allow_unsigned) if _check_sig else None
    if compat is not None and compat not in m["compat"]:
        raise BundleError(f"{p / MANIFEST}: the bundle is for {m['compat']}; this robot needs {compat!r}")
    _check_files(p, m["files"])
    try:
        safety = json.loads((p / SAFETY).read_bytes())
    except ValueError as e:
        raise BundleError(f"{p / SAFETY}: not JSON: {e}") from None
    if safety != m["safety"]:
        raise BundleError(f"{p / SAFETY}: differs from the manifest's safety block")
    try:
        pol = Policy.load(p / POLICY_DIR)
    except PolicyError as e:
        raise BundleError(f"{p / POLICY_DIR}: the policy does not load: {e}") from None
    _check_safety(safety, action_names(pol.policy), str(p / SAFETY))
    return VerifiedBundle(path=p, manifest=m, key_id=kid, signed=kid is not None,
                          manifest_sha256=hashlib.sha256(data).hexdigest())


def manifest_sha256(bundle_dir: str | os.PathLike) -> str:
    return hashlib.sha256((Path(bundle_dir) / MANIFEST).read_bytes()).hexdigest()

