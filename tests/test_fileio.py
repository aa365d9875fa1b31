"""The one atomic writer: the old file survives a failed write, no temp file stays, threads never collide."""

import errno
import tempfile
import threading

import pytest
import torch

from bigl_sam.errors import BiglSamError
from bigl_sam.fileio import atomic_write, atomic_write_text, check_writable


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
