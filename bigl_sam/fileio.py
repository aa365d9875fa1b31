"""The one way files are written here: atomically (temp file, fsync, rename), so a reader never sees half a
file, a crash leaves the previous version in place, and a full disk is one clear error. A writer that
names its own files (onnx: a large model's weights go beside the graph) writes them the same way
(`atomic_save`), and a folder of files that belong together (an ONNX export) is replaced as a whole
(`atomic_folder`)."""

import errno
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Union

from .errors import BiglSamError

PathLike = Union[str, Path]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Calls `write(f)` on a temp file beside `path`, fsyncs it and renames it to `path`.

    The temp name is unique per process and thread. On any failure the temp file is removed and `path`
    keeps what it held before; a full disk, a refused write or any other OSError (a read-only or failing
    disk) becomes a `BiglSamError` naming the folder. Other exceptions (from `write`) pass unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BiglSamError(f"{path.parent}: cannot create the folder ({err.strerror})") from None
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        raise_write_error(err, path)
    return path


def atomic_save(path: PathLike, save: Callable[[Path], None]) -> Path:
    """Calls `save(target)` for a writer that opens its own files (`target`: `path`'s name in a temp folder
    beside `path`) and renames each file it wrote beside `path`, `path` itself last: a reader that finds
    `path` finds the files it names (onnx saves a model over 2 GB as the graph and `NAME.data`). On any
    failure nothing is left of the temp folder; OSErrors become a `BiglSamError` as in `atomic_write`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as err:
        raise BiglSamError(f"{path.parent}: cannot create the folder ({err.strerror})") from None
    try:
        save(tmp / path.name)
        for part in sorted(tmp.iterdir(), key=lambda p: p.name == path.name):
            os.replace(part, path.with_name(part.name))
    except BaseException as err:
        raise_write_error(err, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


@contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """For writes that cannot be atomic (a log file appended to, a TensorBoard event file): a full disk, a
    refused write or any other OSError inside the block becomes the same one-line `BiglSamError` as in
    `atomic_write`."""
    try:
        yield
    except BaseException as err:
        raise_write_error(err, Path(path))


def raise_write_error(err: BaseException, path: Path) -> None:
    """Raises `err` again; a full disk, a refused write or any other OSError as a `BiglSamError` naming the
    folder."""
    if _no_space(err):
        raise BiglSamError(f"no space left on {path.parent} (writing {path.name})") from None
    if isinstance(err, PermissionError):
        raise BiglSamError(f"{path.parent}: permission denied (writing {path.name})") from None
    if isinstance(err, OSError):
        raise BiglSamError(f"{path.parent}: cannot write {path.name} ({err.strerror or err})") from None
    raise err


def check_writable(path: PathLike, what: str = "") -> Path:
    """Raises the one-line `BiglSamError` that writing `path` with `atomic_write` would end in, before any
    work starts: `path` is a folder, a parent of it is a file, or the nearest existing folder above it
    refuses a new file (read-only, permission denied). `what` (e.g. "--json") starts the message.

    Leaves nothing behind: a probe file is created and removed; missing folders are not created here
    (`atomic_write` makes them). Returns `path` as a `Path`.
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise BiglSamError(f"{name}: is a folder, not a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise BiglSamError(f"{name}: {folder} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.probe")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise BiglSamError(f"{name}: cannot write in {folder} ({err.strerror or err})") from None
    return path


def remove_stale_temporaries(folder: Path) -> None:
    """Temp files of atomic writes that a killed process never renamed; nothing reads them."""
    for stale in folder.glob(".*.tmp*"):
        stale.unlink(missing_ok=True)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def _no_space(err: BaseException) -> bool:
    """ENOSPC as an OSError, or as torch's `RuntimeError: [enforce fail at inline_container.cc] ...`, or
    anything raised while handling one (torch.save's zip writer, closing after a failed write, raises
    `unexpected pos ...` with the ENOSPC as its context)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if isinstance(err, RuntimeError) and ("No space left" in text or "file write failed" in text):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def atomic_folder(out: PathLike, waiting: Optional[Callable[[], None]] = None) -> Iterator[Path]:
    """Yields an empty folder beside `out` to fill; when the block ends without an exception, that folder
    replaces `out` as a whole, else it is removed and `out` keeps what it held. Callers check first that
    what `out` holds is theirs to replace; a symlink's target is replaced, the link kept.

    A second writer of the same `out` waits for the first (`waiting()` is called once, to say so): an
    exclusive lock on `.NAME.lock` beside `out` is held for the whole block, and the OS releases it when a
    process dies. The swap is two renames (`out` to `.NAME.old`, the new folder to `out`), then the old
    copy is removed; a writer killed between the two renames leaves `out` missing and the old folder
    complete as `.NAME.old`, and the next writer puts it back before it starts (as it removes a
    half-written `.NAME.new`). OSErrors become one-line `BiglSamError`s naming the folder.
    """
    import fcntl  # here, not at the top: POSIX only, and the rest of this module runs anywhere

    out = Path(os.path.realpath(out))
    leftovers = folder_leftovers(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(out.parent / f".{out.name}.lock", "a")
    except OSError as err:
        raise_write_error(err, out)
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            recover_folder(out)
            leftovers["new"].mkdir()
            yield leftovers["new"]
            if out.exists():
                os.rename(out, leftovers["old"])
            os.rename(leftovers["new"], out)
            shutil.rmtree(leftovers["old"], ignore_errors=True)
        except BaseException as err:
            shutil.rmtree(leftovers["new"], ignore_errors=True)
            raise_write_error(err, out)


def folder_leftovers(out: Path) -> dict:
    """The names `atomic_folder` uses beside `out`: "new" (being filled) and "old" (being replaced)."""
    return {kind: out.with_name(f".{out.name}.{kind}") for kind in ("new", "old")}


def recover_folder(out: Path) -> None:
    """Undoes what a writer killed inside `atomic_folder(out)` left: the old folder goes back to `out` if
    the swap stopped halfway, and a half-written new folder is removed. Call holding the lock."""
    leftovers = folder_leftovers(out)
    if leftovers["old"].exists():
        if out.exists():
            shutil.rmtree(leftovers["old"])
        else:
            os.rename(leftovers["old"], out)
    shutil.rmtree(leftovers["new"], ignore_errors=True)
