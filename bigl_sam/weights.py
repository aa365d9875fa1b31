"""`bigl-sam weights list|download|verify`: the manifest of known checkpoints, and getting them safely.

The manifest ships inside the package (`bigl_sam/manifest.json`). Weights live in one folder:
`--weights-dir`, else `$BIGL_SAM_WEIGHTS`, else the checkout's `weights/` when the package runs from a source
checkout (`checkout_weights_dir`), else the user cache folder (`$XDG_CACHE_HOME/bigl-sam/weights`,
`~/.cache/bigl-sam/weights` when XDG_CACHE_HOME is not set), as an installed wheel has no checkout.

A download goes to `NAME.part` (resumed with an HTTP range request when one is there), is checked
against the manifest's size and sha256, and only then renamed to NAME: a file that fails the check is
never under the final name.
"""

import argparse
import errno
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from tqdm import tqdm

from .arguments import add_renamed
from .errors import BiglSamError

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "manifest.json"
CHECKOUT_WEIGHTS = "weights"  # the source checkout's weights folder, beside bigl_sam/
# A pyproject.toml's line naming this project (the [project] table's `name`).
PROJECT_NAME_LINE = re.compile(r"""^name\s*=\s*["']bigl-sam["']\s*(#.*)?$""", re.MULTILINE)
WEIGHTS_DIR_HELP = ("$BIGL_SAM_WEIGHTS, else the checkout's weights/ when run from a source checkout, else "
                    "~/.cache/bigl-sam/weights (under $XDG_CACHE_HOME if set)")
CHUNK = 1 << 20
TIMEOUT_S = 30
RANGE_NOT_SATISFIABLE = 416  # HTTP: the .part is at least as long as the file on the server


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    model: str
    url: str
    bytes: int
    sha256: str
    md5: str = ""


def weights_dir(override: Optional[Path] = None) -> Path:
    """`override` (--weights-dir), else $BIGL_SAM_WEIGHTS, else the checkout's weights/ (`checkout_weights_dir`), else
    the user cache folder."""
    if override is not None:
        return Path(override)
    if os.environ.get("BIGL_SAM_WEIGHTS"):
        return Path(os.environ["BIGL_SAM_WEIGHTS"])
    checkout = checkout_weights_dir()
    if checkout is not None:
        return checkout
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "bigl-sam" / "weights"


def checkout_weights_dir() -> Optional[Path]:
    """The source checkout's `weights/` folder when the package runs from a checkout: the package folder's
    parent holds a pyproject.toml naming bigl-sam and a `weights/` folder. An installed wheel never matches
    (site-packages has no pyproject.toml of bigl-sam beside the package)."""
    root = PACKAGE_DIR.parent
    try:
        project = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    folder = root / CHECKOUT_WEIGHTS
    return folder if PROJECT_NAME_LINE.search(project) and folder.is_dir() else None


def folder_line(folder: Path) -> str:
    """The one line a command prints about the weights folder it searched."""
    return f"weights folder: {folder}"


def folder_problem(folder: Path) -> Optional[str]:
    """Why `folder` cannot be searched for weights ("does not exist", "is a file, not a folder", ...), or
    None when it can."""
    try:
        os.listdir(folder)
    except FileNotFoundError:
        return "is a broken symlink" if folder.is_symlink() else "does not exist"
    except NotADirectoryError:
        return "is a file, not a folder"
    except OSError as err:
        return "is a symlink loop" if err.errno == errno.ELOOP else f"cannot be read ({err.strerror})"
    return None


def read_manifest(path: Optional[Path] = None) -> Dict[str, KnownCheckpoint]:
    path = Path(path) if path is not None else MANIFEST
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


def _program() -> str:
    from .cli import program  # here, not at the top: the command imports this module's options

    return program()


def check_size(entry: KnownCheckpoint, path: Path) -> None:
    """A `BiglSamError` if the file at `path` is not the manifest's size (cut short, or another file)."""
    size = path.stat().st_size
    if size != entry.bytes:
        raise BiglSamError(f"{path}: {size} bytes, expected {entry.bytes} (truncated or another file); "
                           f"get it again with `{_program()} weights download {entry.name}`")


def _check(entry: KnownCheckpoint, path: Path) -> None:
    check_size(entry, path)
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise BiglSamError(f"{path}: sha256 {digest} does not match the manifest's {entry.sha256}")


def verify(entry: KnownCheckpoint, folder: Path) -> Path:
    """The file's path if its size and sha256 match the manifest; else a `BiglSamError` saying what differs."""
    path = folder / entry.name
    if not path.is_file():
        raise BiglSamError(f"{path}: not found; get it with `{_program()} weights download {entry.name}` "
                           f"or copy it there from {entry.url}")
    _check(entry, path)
    return path


def download(entry: KnownCheckpoint, folder: Path) -> Path:
    """Fetches `entry` into `folder` through `NAME.part`; renames it to NAME only once size and sha256 match.

    A `.part` that fails the check is removed (the next run starts afresh); one longer than the file, or one
    the server refuses to resume (HTTP 416), is downloaded again from the start.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target, partial = folder / entry.name, folder / (entry.name + ".part")
    if target.is_file():
        return verify(entry, folder)
    if partial.is_file() and partial.stat().st_size > entry.bytes:
        partial.unlink()
    if not (partial.is_file() and partial.stat().st_size == entry.bytes):
        try:
            try:
                _fetch(entry, partial)
            except urllib.error.HTTPError as err:
                if err.code != RANGE_NOT_SATISFIABLE:
                    raise
                partial.unlink(missing_ok=True)
                _fetch(entry, partial)
        except (urllib.error.URLError, OSError) as err:
            raise _download_error(entry, folder, err) from None
    try:
        _check(entry, partial)
    except BiglSamError as err:
        partial.unlink()
        raise BiglSamError(f"download of {entry.name} failed its check and was removed ({err})") from None
    partial.replace(target)
    return target


def _fetch(entry: KnownCheckpoint, partial: Path) -> None:
    """Appends what the server has beyond the `.part`'s current length (or writes it anew if the server
    does not resume)."""
    done = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        resumed = done and getattr(response, "status", None) == 206
        _copy(response, partial, entry, done if resumed else 0)


def _download_error(entry: KnownCheckpoint, folder: Path, err: Exception) -> BiglSamError:
    reason = getattr(err, "reason", err)
    return BiglSamError(f"could not download {entry.name} from {entry.url} ({reason}); on a machine without "
                        f"internet copy the file into {folder} and run `{_program()} weights verify {entry.name}`")


def _copy(response, partial: Path, entry: KnownCheckpoint, offset: int) -> None:
    with open(partial, "ab" if offset else "wb") as out, _progress(entry.bytes, entry.name, offset) as bar:
        for block in iter(lambda: response.read(CHUNK), b""):
            out.write(block)
            bar.update(len(block))


def _progress(total: int, label: str, initial: int = 0, disable: bool = False) -> tqdm:
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=label, leave=False, disable=disable)


def status(entry: KnownCheckpoint, folder: Path) -> str:
    """present (the manifest's size; `verify` checks the sha256), wrong size, partial download, or missing."""
    path, partial = folder / entry.name, folder / (entry.name + ".part")
    if path.is_file():
        size = path.stat().st_size
        return "present" if size == entry.bytes else f"wrong size ({size} bytes)"
    if partial.is_file():
        return f"partial ({partial.stat().st_size} of {entry.bytes} bytes; `download` resumes it)"
    return "missing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_renamed(common, "--weights-dir", "--dir", type=Path, default=None, metavar="DIR",
                help=f"weights folder (default: {WEIGHTS_DIR_HELP})")
    common.add_argument("--manifest", type=Path, default=None, help="manifest JSON (default: the one shipped)")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", parents=[common], help="known checkpoints and whether each is here")
    for action in ("download", "verify"):
        actions.add_parser(action, parents=[common], help=f"{action} one checkpoint").add_argument("name")


def run(args: argparse.Namespace) -> int:
    manifest, folder = read_manifest(args.manifest), weights_dir(args.weights_dir)
    if args.action == "list":
        print(folder_line(folder))
        for entry in manifest.values():
            print(f"{entry.name:<24} {entry.model:<6} {entry.bytes / 1e9:6.2f} GB  {status(entry, folder)}")
        return 0
    entry = lookup(manifest, args.name)
    path = download(entry, folder) if args.action == "download" else verify(entry, folder)
    print(f"{path}: OK (sha256 {entry.sha256[:12]}...)")
    return 0
