"""The one atomic writer: the old file survives a failed write, no temp file stays, threads never collide."""

import errno
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from bigl_sam.errors import BiglSamError
from bigl_sam.fileio import atomic_folder, atomic_save, atomic_write, atomic_write_text, check_writable

ROOT = Path(__file__).resolve().parents[1]  # `python -c` run here imports this checkout


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "old")

    def broken(f):
        f.write(b"half")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_full_disk_is_one_error_naming_the_folder(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(BiglSamError, match=f"no space left on {tmp_path}"):
        atomic_write(tmp_path / "b.bin", full)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_of_its_own_files_lands_them_all_or_none(tmp_path):
    """As onnx saves a model over 2 GB: the graph at the path it is given, its weights beside it."""
    path = tmp_path / "encoder.onnx"

    def save(target, fail=False):
        target.with_name(target.name + ".data").write_text("weights")
        if fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        target.write_text("graph")

    assert atomic_save(path, save) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    path.write_text("old graph")
    with pytest.raises(BiglSamError, match=f"no space left on {tmp_path} \\(writing encoder.onnx\\)"):
        atomic_save(path, lambda target: save(target, fail=True))
    assert path.read_text() == "old graph"  # and no temp folder is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]


def test_torch_enforce_failure_on_a_full_disk_is_recognised(tmp_path):
    def full(f):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 file write failed")

    with pytest.raises(BiglSamError, match="no space left"):
        atomic_write(tmp_path / "c.pt", full)


def test_threads_writing_one_file_at_once_never_collide(tmp_path):
    path, errors = tmp_path / "mask.png", []
    barrier = threading.Barrier(8)

    def writer(i):
        def slow(f):
            barrier.wait()
            f.write(str(i).encode())

        try:
            atomic_write(path, slow)
        except Exception as err:  # a shared temp name fails here with FileNotFoundError
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in {str(i) for i in range(8)}
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


class _DiskFullAfter:
    """A file whose disk fills up after `room` bytes, as a small tmpfs does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def test_torch_save_on_a_disk_that_fills_up_is_one_error_naming_the_folder(tmp_path):
    # torch.save's zip writer hides the ENOSPC behind "unexpected pos ..." raised while closing
    def save(f):
        torch.save({"weights": torch.zeros(4096)}, _DiskFullAfter(f, 1000))

    with pytest.raises(BiglSamError, match=f"no space left on {tmp_path} \\(writing d.pt\\)"):
        atomic_write(tmp_path / "d.pt", save)
    assert list(tmp_path.iterdir()) == []


def test_check_writable_names_a_folder_a_file_parent_and_a_refusing_folder(monkeypatch, tmp_path):
    with pytest.raises(BiglSamError, match=f"^--json {tmp_path}: is a folder, not a file$"):
        check_writable(tmp_path, "--json")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BiglSamError, match=f"^{tmp_path}/file/a/b.json: {tmp_path}/file is a file, not a folder$"):
        check_writable(tmp_path / "file" / "a" / "b.json")

    def read_only(*args, **kwargs):  # chmod does not stop root (these tests may run as root)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(BiglSamError, match=f"^{tmp_path}/new/out.json: cannot write in {tmp_path} \\(Read-only"):
        check_writable(tmp_path / "new" / "out.json")


def test_check_writable_leaves_nothing_behind(tmp_path):
    assert check_writable(tmp_path / "new" / "out.json") == tmp_path / "new" / "out.json"
    assert check_writable(str(tmp_path / "out.json")) == tmp_path / "out.json"
    assert list(tmp_path.iterdir()) == []  # no probe file, and "new" is not created


def _fill(folder, **files):
    for name, text in files.items():
        (folder / name).write_text(text)


def test_atomic_folder_replaces_the_folder_as_a_whole(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    _fill(out, a="old a", b="old b")
    with atomic_folder(out) as new:
        _fill(new, a="new a")
        assert sorted(p.name for p in out.iterdir()) == ["a", "b"]  # untouched until the block ends
    assert [(p.name, p.read_text()) for p in out.iterdir()] == [("a", "new a")]  # b went with the old folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]


def test_atomic_folder_keeps_the_old_folder_when_the_block_fails(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    _fill(out, a="old a")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out) as new:
            _fill(new, a="half")
            raise KeyboardInterrupt
    assert [(p.name, p.read_text()) for p in out.iterdir()] == [("a", "old a")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]


KILLED_WRITER = """
import os, sys
from pathlib import Path
from bigl_sam import fileio

out, when = Path(sys.argv[1]), sys.argv[2]
rename = os.rename

def rename_then_die(src, dst):  # the first rename of the swap happens, then the process is killed
    rename(src, dst)
    os.kill(os.getpid(), 9)

with fileio.atomic_folder(out) as new:
    (new / "a").write_text("new a")
    if when == "filling":
        os.kill(os.getpid(), 9)
    os.rename = rename_then_die
"""


@pytest.mark.parametrize("when", ["filling", "swapping"])
def test_a_writer_killed_at_any_moment_leaves_the_old_folder_and_the_next_one_cleans_up(tmp_path, when):
    """Killed while filling its folder, or between the swap's two renames (`out` is then missing and the
    old folder complete beside it, as `.NAME.old`): the next writer puts the old folder back first."""
    out = tmp_path / "export"
    out.mkdir()
    _fill(out, a="old a", b="old b")
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), when], cwd=ROOT)
    assert done.returncode == -9
    if when == "swapping":
        assert not out.exists() and sorted(p.name for p in (tmp_path / ".export.old").iterdir()) == ["a", "b"]
    with pytest.raises(RuntimeError):  # a writer that fails restores what the killed one left, and then fails
        with atomic_folder(out):
            raise RuntimeError
    assert sorted((p.name, p.read_text()) for p in out.iterdir()) == [("a", "old a"), ("b", "old b")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]


def test_a_second_writer_waits_for_the_first_and_both_folders_land_whole(tmp_path):
    out, started, waited = tmp_path / "export", threading.Event(), threading.Event()

    def first():
        with atomic_folder(out) as new:
            _fill(new, a="first a", b="first b")
            started.set()
            waited.wait(30)  # still holding the lock when the second writer arrives

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(30)
    with atomic_folder(out, waiting=waited.set) as new:  # blocks until the first one swapped its folder in
        assert sorted((p.name, p.read_text()) for p in out.iterdir()) == [("a", "first a"), ("b", "first b")]
        _fill(new, a="second a")
    thread.join()
    assert waited.is_set()
    assert [(p.name, p.read_text()) for p in out.iterdir()] == [("a", "second a")]


def test_atomic_folder_in_a_folder_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BiglSamError, match="cannot create the folder|cannot write"):
        with atomic_folder(tmp_path / "file" / "export"):
            pass
