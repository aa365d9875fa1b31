"""`bigl-sam weights list|download|verify`: the manifest of known checkpoints, and getting them safely.

A download goes to `NAME.part` (resumed with an HTTP range request when one is there), is checked
against the manifest's size and sha256, and only then renamed to NAME.
"""

import argparse
import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from tqdm import tqdm

from .errors import BiglSamError

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
CHUNK = 1 << 20
TIMEOUT_S = 30


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    model: str
    url: str
    bytes: int
    sha256: str
    md5: str = ""


def weights_dir(override: Optional[Path] = None) -> Path:
    """--dir, else $BIGL_SAM_WEIGHTS, else the repository's weights/ folder."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("BIGL_SAM_WEIGHTS", REPO_WEIGHTS))


def read_manifest(path: Optional[Path] = None) -> Dict[str, KnownCheckpoint]:
    path = Path(path) if path is not None else REPO_WEIGHTS / "manifest.json"
    try:
        entries = json.loads(path.read_text())["checkpoints"]
        return {e["name"]: KnownCheckpoint(**e) for e in entries}
    except FileNotFoundError:
        raise BiglSamError(f"{path}: manifest not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BiglSamError(f"{path}: malformed manifest ({err})") from None


def lookup(manifest: Dict[str, KnownCheckpoint], name: str) -> KnownCheckpoint:
    if name not in manifest:
        raise BiglSamError(f"unknown checkpoint {name!r}; known: {', '.join(manifest)}")
    return manifest[name]


def sha256_of(path: Path, progress: bool = True) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, _progress(path.stat().st_size, f"sha256 {path.name}", disable=not progress) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify(entry: KnownCheckpoint, folder: Path) -> Path:
    """The file's path if its size and sha256 match the manifest; else a `BiglSamError` saying what differs."""
    path = folder / entry.name
    if not path.is_file():
        raise BiglSamError(f"{path}: not found; get it with `bigl-sam weights download {entry.name}` "
                           f"or copy it there from {entry.url}")
    size = path.stat().st_size
    if size != entry.bytes:
        raise BiglSamError(f"{path}: {size} bytes, expected {entry.bytes} (truncated or another file)")
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise BiglSamError(f"{path}: sha256 {digest} does not match the manifest's {entry.sha256}")
    return path


def download(entry: KnownCheckpoint, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target, partial = folder / entry.name, folder / (entry.name + ".part")
    if target.is_file():
        return verify(entry, folder)
    done = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            resumed = done and response.status == 206
            _copy(response, partial, entry, done if resumed else 0)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise BiglSamError(f"could not download {entry.name} from {entry.url} ({reason}); on a machine without "
                           f"internet copy the file into {folder} and run `bigl-sam weights verify {entry.name}`"
                           ) from None
    partial.replace(target)
    return verify(entry, folder)


def _copy(response, partial: Path, entry: KnownCheckpoint, offset: int) -> None:
    with open(partial, "ab" if offset else "wb") as out, _progress(entry.bytes, entry.name, offset) as bar:
        for block in iter(lambda: response.read(CHUNK), b""):
            out.write(block)
            bar.update(len(block))


def _progress(total: int, label: str, initial: int = 0, disable: bool = False) -> tqdm:
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=label, leave=False, disable=disable)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=None, help="default: $BIGL_SAM_WEIGHTS or weights/")
    common.add_argument("--manifest", type=Path, default=None, help="manifest JSON (default: weights/manifest.json)")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="known checkpoints and whether each is here")
    for action in ("download", "verify"):
        actions.add_parser(action, parents=[common], help=f"{action} one checkpoint").add_argument("name")


def run(args: argparse.Namespace) -> int:
    manifest, folder = read_manifest(args.manifest), weights_dir(args.dir)
    if args.action == "list":
        for entry in manifest.values():
            here = "here" if (folder / entry.name).is_file() else "missing"
            print(f"{entry.name:<24} {entry.model:<6} {entry.bytes / 1e9:6.2f} GB  {here}")
        return 0
    entry = lookup(manifest, args.name)
    path = download(entry, folder) if args.action == "download" else verify(entry, folder)
    print(f"{path}: OK (sha256 {entry.sha256[:12]}...)")
    return 0
