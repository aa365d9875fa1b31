"""The CLI's promise: any BiglSamError, and any failed write, is one line on stderr and exit code 2."""

import errno
import os

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import bigl_sam.bench.cli
from bigl_sam.cli import main
from bigl_sam.errors import BiglSamError

UNREADABLE = "img3.png: not a readable image (cannot identify image file)"


class UnreadableImages(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise BiglSamError(UNREADABLE)


def error_lines(capsys) -> list:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def test_error_from_a_data_loader_worker_is_its_own_one_line(monkeypatch, capsys):
    """torch re-raises a worker's exception with the worker's traceback in the message."""
    def run(args):
        next(iter(DataLoader(UnreadableImages(), num_workers=1)))

    monkeypatch.setattr(bigl_sam.bench.cli, "run", run)
    assert main(["bench"]) == 2
    assert error_lines(capsys) == [f"bigl-sam bench: error: {UNREADABLE}"]


def test_error_while_setting_up_the_arguments(monkeypatch, capsys):
    def add_arguments(parser):
        raise BiglSamError("weights/manifest.json: not valid JSON")

    monkeypatch.setattr(bigl_sam.bench.cli, "add_arguments", add_arguments)
    assert main(["bench"]) == 2
    assert error_lines(capsys) == ["bigl-sam bench: error: weights/manifest.json: not valid JSON"]


def test_os_error_outside_the_writer_is_one_line(monkeypatch, capsys):
    def run(args):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "bench.json")

    monkeypatch.setattr(bigl_sam.bench.cli, "run", run)
    assert main(["bench"]) == 2
    assert error_lines(capsys) == ["bigl-sam bench: error: bench.json: Is a directory"]


@pytest.mark.parametrize(
    "code, says",
    [(errno.EIO, "input/output error"), (errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left on"),
     (errno.EACCES, "permission denied")],
)
def test_failed_write_in_distill_cache(tmp_path, official_checkpoint, monkeypatch, capsys, code, says):
    """The first file `distill cache` writes (its settings) fails to reach the disk: one line naming the
    folder, exit 2, no temp file left behind."""
    images, out = tmp_path / "images", tmp_path / "cache"
    images.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / "a.png")

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    args = ["--teacher", "vit_test", "--teacher-checkpoint", str(official_checkpoint("vit_test"))]
    assert main(["distill", "cache", *args, "--images", str(images), "--out", str(out)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("bigl-sam distill: error: ")
    assert str(out) in lines[0] and says in lines[0].lower()
    assert list(out.iterdir()) == [], "the temp file is removed"


def _model_commands(tmp_path) -> dict:
    """The commands that take the shared model options (`bigl_sam.options`), each with what else it needs."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / "a.png")
    return {
        "amg": ["amg", "--images", str(images), "--out", str(tmp_path / "masks")],
        "embed": ["embed", "--images", str(images), "--out", str(tmp_path / "embeddings")],
        "eval": ["eval", "coco", "--images", str(images), "--annotations", str(tmp_path / "none.json")],
        "demo": ["demo", "--no-compile"],
    }


@pytest.mark.parametrize("command", ["amg", "embed", "eval", "demo"])
def test_an_unknown_model_is_one_line_in_every_command(tmp_path, capsys, command):
    assert main(_model_commands(tmp_path)[command] + ["--model", "vit_nope"]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"bigl-sam {command}: error: unknown model 'vit_nope'")


@pytest.mark.parametrize("command", ["amg", "embed", "eval", "demo"])
def test_a_keep_ratio_out_of_range_is_one_line_in_every_command(tmp_path, capsys, command):
    assert main(_model_commands(tmp_path)[command] + ["--model", "bigl_test", "--keep-ratio", "1.5"]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"bigl-sam {command}: error: ") and "--keep-ratio must be in (0, 1], got 1.5" in line
