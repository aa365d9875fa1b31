"""Content fingerprints: what a run's identity records of its inputs, so that resuming notices a file
replaced under the same name (a path, a size or a time does not).

- `weights_fingerprint(path)`: the sha256 of a weights file's bytes, or for a folder (a transformers
  `save_pretrained` folder, sharded or not) the sha256 of its files' names and sha256s. A file's sha256 is
  cached (`SHA256_CACHE`, keyed by resolved path, size, modification and status-change times), so a
  multi-GB checkpoint is read once, not on every run; any write to the file changes its status-change time
  (which no tool can set back), so it is hashed again.
- `image_fingerprint(path)`: cheap, for every image of a folder on every resume: the size and the sha256 of
  the first and last IMAGE_SAMPLE_BYTES. Any other image under the same name differs there (its header and
  entropy-coded data); an edit of the middle bytes alone, at the same size, would go unnoticed.
- `changed_line(found, wanted)`: one line saying which recorded entries differ.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Mapping, Union

from .errors import BiglSamError
from .fileio import atomic_write_text

PathLike = Union[str, Path]
CHUNK_BYTES = 1 << 20
IMAGE_SAMPLE_BYTES = 1 << 16
# file -> {"bytes", "mtime_ns", "ctime_ns", "sha256"}; under the user cache folder, as the weights folder's default is.
SHA256_CACHE = Path("bigl-sam") / "sha256.json"


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / SHA256_CACHE


def file_sha256(path: PathLike) -> str:
    """The sha256 (hex) of the file's bytes, from the cache when its path, size and time are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    key, cache = str(path), _read_cache()
    entry = cache.get(key)
    stamp = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()):
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    cache = {k: v for k, v in cache.items() if os.path.isfile(k)}  # forget files that are gone
    cache[key] = {**stamp, "sha256": digest.hexdigest()}
    _write_cache(cache)
    return digest.hexdigest()


def weights_fingerprint(path: PathLike) -> str:
    """The sha256 of a weights file, or of a folder's files (names relative to it, and their sha256s)."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = "\n".join(f"{p.relative_to(path).as_posix()} {file_sha256(p)}" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def image_fingerprint(path: PathLike) -> str:
    """`SIZE:SHA256` of the file's size and its first and last IMAGE_SAMPLE_BYTES (the whole of a smaller
    file)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(IMAGE_SAMPLE_BYTES))
        if size > IMAGE_SAMPLE_BYTES:
            f.seek(max(IMAGE_SAMPLE_BYTES, size - IMAGE_SAMPLE_BYTES))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()}"


def changed_line(found: Mapping, wanted: Mapping) -> str:
    """Which entries of a recorded identity (`found`) differ from this run's (`wanted`), on one line:
    `weights (sha256 1a2b3c4d5e6f -> 9f8e7d6c5b4a), keep_ratio (0.25 -> 0.5)`."""
    keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    return ", ".join(f"{k} ({_short(found.get(k))} -> {_short(wanted.get(k))})" for k in keys)


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_cache() -> Dict[str, dict]:
    try:
        cache = json.loads(cache_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: hash again
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(cache: Dict[str, dict]) -> None:
    try:
        atomic_write_text(cache_path(), json.dumps(cache, indent=1, sort_keys=True))
    except BiglSamError:  # an unwritable cache folder costs time on the next run, nothing else
        pass
