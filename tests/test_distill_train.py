"""Student training: the loss goes down, SIGKILL + --resume lands on the same weights, torchrun agrees.

A 256 px variant of the tiny test architectures (16 x 16 embedding grid) keeps each step well under a
second on a 2-core CPU; the 1024 px path is covered in test_distill_cache.py.
"""

import argparse
import contextlib
import csv
import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from bigl_sam import build_model, load_sam, save_checkpoint
from bigl_sam.checkpoint import read_checkpoint
from bigl_sam import distributed
from bigl_sam.cli import main
from bigl_sam.distill import cli as distill_cli
from bigl_sam.distill import train as train_module
from bigl_sam.distill.data import loss_region
from bigl_sam.distill.losses import embedding_loss
from bigl_sam.training.state import load_state, save_final, save_training_state
from bigl_sam.distill.train import TrainConfig, check_config, identity, settings, train
from bigl_sam.training.config import run_dtype
from bigl_sam.errors import BiglSamError

from conftest import randomize_, rows_of, run_torchrun, small_test_configs

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # frugal on a shared CPU, and bit-reproducible
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Teacher and student checkpoints at 256 px, 5 square images, and their teacher cache."""
    root = tmp_path_factory.mktemp("distill")
    teacher_config, student_config = small_test_configs()
    save_checkpoint(randomize_(build_model(teacher_config), seed=1), root / "teacher.pth")
    save_checkpoint(randomize_(build_model(student_config), seed=2), root / "student.pth")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    cache = root / "cache"
    assert main(["distill", "cache", "--teacher-checkpoint", str(root / "teacher.pth"), "--images", str(images),
                 "--out", str(cache), "--augment", "1", "--shard-size", "3"]) == 0
    return root


def run_args(setup, out, steps, batch=2, extra=()):
    return ["--student-checkpoint", str(setup / "student.pth"), "--cache", str(setup / "cache"), "--out", str(out),
            "--steps", str(steps), "--batch", str(batch), "--lr", "3e-3", "--warmup", "2", "--holdout", "1",
            "--workers", "0", *extra]


def config(setup, out, steps, batch=2, **knobs):
    return TrainConfig(student_checkpoint=str(setup / "student.pth"), cache=str(setup / "cache"), out=str(out), steps=steps,
                       batch=batch, lr=3e-3, warmup=2, holdout=1, workers=0, **knobs)


def encoder_weights(path):
    return {k: v for k, v in load_sam(path).state_dict().items() if k.startswith("image_encoder.")}


def test_training_lowers_the_distillation_loss(setup, tmp_path):
    final = train(config(setup, tmp_path, steps=30, eval_every=15, ckpt_every=15, mask_weight=0.5))
    losses = [float(row["loss"]) for row in rows_of(tmp_path / "train.csv")]
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.6 * first, (first, last)
    heldout = rows_of(tmp_path / "eval.csv")
    assert {row["keep_ratio"] for row in heldout} == {"0.15", "0.325", "0.5"}
    assert float(heldout[-1]["loss"]) < float(heldout[0]["loss"])
    assert load_sam(final).config.name == "bigl_test_256"


def test_sigkill_then_resume_ends_where_an_uninterrupted_run_does(setup, tmp_path):
    steps = 12
    reference = train(config(setup, tmp_path / "reference", steps=steps, ckpt_every=3, eval_every=100))
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "bigl_sam.cli", "distill", "train",
               *run_args(setup, run, steps, extra=["--ckpt-every", "3", "--eval-every", "100"])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    deadline = time.time() + 120
    while not (run / "ckpt.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved = read_checkpoint(run / "ckpt.pt")["step"]  # whole, never half-written
    assert 3 <= saved < steps and saved % 3 == 0
    assert not (run / "final.pth").exists()

    assert main(["distill", "train", *run_args(setup, run, steps, extra=["--ckpt-every", "3", "--eval-every", "100",
                                                                          "--resume"])]) == 0
    assert read_checkpoint(run / "ckpt.pt")["step"] == steps
    assert [int(row["step"]) for row in rows_of(run / "train.csv")] == list(range(1, steps + 1))
    resumed, uninterrupted = encoder_weights(run / "final.pth"), encoder_weights(reference)
    for name, value in uninterrupted.items():
        assert torch.allclose(resumed[name], value, atol=1e-6), name


def test_resume_with_other_settings_and_overwriting_a_run_are_refused(setup, tmp_path, capsys):
    train(config(setup, tmp_path, steps=1))
    saved = read_checkpoint(tmp_path / "ckpt.pt")["run"]  # the whole config, as resolved
    assert set(saved) == {field.name for field in dataclasses.fields(TrainConfig)}
    assert saved["workers"] == 0 and saved["mask_weight"] == 0.0 and saved["keep_ratio_range"] == [0.15, 0.5]
    assert main(["distill", "train", *run_args(setup, tmp_path, 1)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["distill", "train", *run_args(setup, tmp_path, 2, extra=["--resume"])]) == 2
    assert "steps: 1 -> 2" in capsys.readouterr().err


def test_two_torchrun_processes_train_as_one_with_the_global_batch(setup, tmp_path):
    steps = 3
    result = run_torchrun(["distill", "train", *run_args(setup, tmp_path / "ddp", steps, batch=1)])
    assert result.returncode == 0, result.stderr[-2000:]
    single = train(config(setup, tmp_path / "single", steps=steps, batch=2))
    together, alone = encoder_weights(tmp_path / "ddp" / "final.pth"), encoder_weights(single)
    start = encoder_weights(setup / "student.pth")
    assert any(not torch.equal(alone[name], start[name]) for name in alone)
    for name, value in alone.items():  # Adam steps here are ~3e-3; float summation order differs
        assert torch.allclose(together[name], value, atol=1e-4), name


def _poisoned_from_call(n, monkeypatch, poison):
    """Wraps the embedding loss: from its n-th call on, `poison(mse)` replaces the MSE term."""
    real, calls = train_module.embedding_loss, []

    def loss(*args):
        calls.append(1)
        terms = real(*args)
        if len(calls) >= n:
            terms["mse"] = poison(terms["mse"])
        return terms

    monkeypatch.setattr(train_module, "embedding_loss", loss)


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("poison, what", [
    (lambda mse: mse * float("nan"), "loss (nan)"),
    (_InfiniteGradient.apply, "gradient norm"),
])
def test_non_finite_loss_or_gradient_stops_the_run_and_keeps_the_last_good_checkpoint(
        setup, tmp_path, monkeypatch, capsys, poison, what):
    _poisoned_from_call(4, monkeypatch, poison)
    assert main(["distill", "train", *run_args(setup, tmp_path, 6, extra=["--ckpt-every", "1", "--eval-every", "100"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "step 4: non-finite" in err and what in err, err
    state = read_checkpoint(tmp_path / "ckpt.pt")
    assert state["step"] == 3 and all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "final.pth").exists()


def test_no_checkpoint_is_written_with_non_finite_weights(setup, tmp_path):
    model = load_sam(setup / "student.pth")
    optimizer = torch.optim.AdamW(model.parameters())
    save_training_state(tmp_path, model, optimizer, 1, {})
    with torch.no_grad():
        next(model.image_encoder.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(BiglSamError, match="not written, 1 tensors hold NaN"):
        save_training_state(tmp_path, model, optimizer, 2, {})
    with pytest.raises(BiglSamError, match="not written"):
        save_final(tmp_path, model)
    assert read_checkpoint(tmp_path / "ckpt.pt")["step"] == 1 and not (tmp_path / "final.pth").exists()


@pytest.mark.parametrize("option, value", [
    ("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"), ("--grad-clip", "-1"), ("--grad-clip", "inf"),
    ("--holdout", "-1"), ("--cosine-weight", "nan"), ("--mask-weight", "-0.5"), ("--min-lr", "inf"),
    ("--weight-decay", "-1"),
])
def test_out_of_range_numbers_are_refused_before_any_work(setup, tmp_path, capsys, option, value):
    assert main(["distill", "train", *run_args(setup, tmp_path / "run", 2, extra=[option, value])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{option} {float(value) if option != '--holdout' else value}" in err, err
    assert not (tmp_path / "run").exists()


def test_full_disk_while_training_is_one_line_and_keeps_the_last_checkpoint(setup, tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save(payload, f, *args, **kwargs):  # the first checkpoint fits, the second does not
        calls.append(1)
        if len(calls) > 1:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["distill", "train", *run_args(setup, tmp_path, 4, extra=["--ckpt-every", "2", "--eval-every", "100"])]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"no space left on {tmp_path} (writing ckpt.pt)")
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "ckpt.pt")["step"] == 2
    assert not list(tmp_path.glob(".*.tmp*")) and not (tmp_path / "final.pth").exists()


def test_full_disk_while_logging_is_one_line(setup, tmp_path, monkeypatch):
    def full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerow", full)
    with pytest.raises(BiglSamError, match=f"no space left on {tmp_path} \\(writing train.csv\\)"):
        train(config(setup, tmp_path, steps=1))


def test_loss_region_full_counts_the_padding_and_valid_does_not():
    teacher = torch.zeros(1, 4, 8, 8)
    student = teacher.clone()
    student[..., 4:, :] = 1.0  # differs only below row 4, where the 2 x 8 image of 64 x 64 px ends
    input_size = torch.tensor([[32, 64]])
    full = embedding_loss(student, teacher, loss_region("full", input_size, 8, 64))
    valid = embedding_loss(student, teacher, loss_region("valid", input_size, 8, 64))
    assert valid["mse"] == 0 and full["mse"] == 0.5


@pytest.mark.parametrize("options, message", [
    (["--student", "bigl_test"], "either --cache (a teacher cache) or --teacher-checkpoint"),
    (["--cache", "c", "--teacher-checkpoint", "t.pth", "--images", "i"],
     "either --cache (a teacher cache) or --teacher-checkpoint"),
    (["--teacher-checkpoint", "t.pth"], "--teacher-checkpoint needs --images"),
    (["--cache", "c"], "--cache needs the student: --student"),
    (["--cache", "c", "--student", "bigl_test", "--images", "i"], "--images goes with --teacher-checkpoint"),
    (["--cache", "c", "--student", "bigl_test", "--loss-region", "inside"], "invalid choice"),
])
def test_where_the_teacher_comes_from_is_checked_first(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) if message == "invalid choice" else contextlib.nullcontext():
        assert main(["distill", "train", "--out", str(tmp_path / "run"), *options]) == 2
    assert message in capsys.readouterr().err


def _parse_train(*argv):
    parser = argparse.ArgumentParser(prog="bigl-sam distill")
    distill_cli.add_arguments(parser)
    options = vars(parser.parse_args(["train", *argv]))
    del options["distill_command"]
    return TrainConfig(**options)


def test_the_train_flags_are_the_config_fields_with_their_defaults(capsys):
    assert _parse_train("--out", "run") == TrainConfig(out="run")
    parsed = _parse_train("--out", "run", "--keep-ratio-range", "0.2,0.4", "--freeze-source", "--steps", "7",
                          "--mask-weight", "0.5", "--dtype", "float32")
    assert parsed == TrainConfig(out="run", keep_ratio_range=(0.2, 0.4), freeze_source=True, steps=7,
                                 mask_weight=0.5, dtype="float32")
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        _parse_train("--out", "run", "--keep-ratio-range", "0.2")
    assert "'0.2': expected 2 comma-separated numbers" in capsys.readouterr().err


@pytest.mark.parametrize("former, current, field", [
    ("--teacher-from", "--teacher-checkpoint", "teacher_checkpoint"),
    ("--init-from", "--encoder-checkpoint", "encoder_checkpoint"),
    ("--decoder-from", "--decoder-checkpoint", "decoder_checkpoint"),
])
def test_the_former_train_flags_still_work_and_warn(capsys, former, current, field):
    assert getattr(_parse_train("--out", "run", former, "sam.pth"), field) == "sam.pth"
    assert f"{former} is now {current}" in capsys.readouterr().err


def test_the_former_amp_flag_and_its_values_still_work_and_warn(capsys):
    """`--amp bf16|none|auto` of earlier versions is `--dtype bfloat16|float32|auto`, with a warning each."""
    parsed = _parse_train("--out", "run", "--amp", "none")
    assert "--amp is now --dtype" in capsys.readouterr().err
    assert run_dtype(parsed.dtype, torch.device("cpu")) == "float32"
    assert run_dtype("bf16", torch.device("cpu")) == "bfloat16"
    assert "--dtype bf16 is now --dtype bfloat16" in capsys.readouterr().err
    assert run_dtype("auto", torch.device("cpu")) == "float32"


def _changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return tuple(v / 2 for v in value)
    return "other" if value is None else value + "-other"


def test_every_setting_is_in_the_resume_check_unless_declared_free(setup, tmp_path):
    """A field added to TrainConfig joins the run identity by default; only those declared
    identity=False may change on --resume."""
    cfg = config(setup, tmp_path, steps=4, mask_weight=0.0)
    model = load_sam(setup / "student.pth")
    save_training_state(tmp_path, model, torch.optim.AdamW(model.parameters()), 1, settings(cfg))
    process = distributed.Process(0, 1, torch.device("cpu"))
    free = []
    for field in dataclasses.fields(TrainConfig):
        other = dataclasses.replace(cfg, **{field.name: _changed(getattr(cfg, field.name))})
        try:
            load_state(tmp_path, identity(other), process)
            free.append(field.name)
        except BiglSamError as err:
            assert f"{field.name}: " in str(err), err
    assert free == ["out", "student_checkpoint", "encoder_checkpoint", "decoder_checkpoint", "eval_every", "ckpt_every", "keep_every", "dtype", "workers",
                    "device", "resume"]


@pytest.mark.parametrize("knobs, message", [
    ({"steps": 0}, "--steps 0: must be at least 1"),
    ({"workers": -1}, "--workers -1: must not be negative"),
    ({"lr": 0}, "--lr 0: must be a finite number > 0"),  # an int in a float field: still the float check
    ({"dtype": "fp16"}, "--dtype fp16: expected auto or float32 or bfloat16"),
    ({"loss_region": "inside"}, "--loss-region inside: expected full or valid"),
])
def test_config_checks_come_from_the_field_declarations(knobs, message):
    with pytest.raises(BiglSamError, match=message):
        check_config(TrainConfig(out="run", cache="c", student="bigl_test", **knobs))


def test_each_purpose_draws_its_own_stream_for_the_same_step_number():
    from bigl_sam.training.schedule import EVAL_PROMPTS, KEEP_RATIO, ORDER, PROMPTS, seeded_generator

    firsts = {torch.rand(1, generator=seeded_generator(0, purpose, 3)).item()
              for purpose in (KEEP_RATIO, ORDER, PROMPTS, EVAL_PROMPTS)}
    assert len(firsts) == 4
    same = [torch.rand(1, generator=seeded_generator(0, ORDER, 3)).item() for _ in range(2)]
    assert same[0] == same[1]


def test_a_student_file_has_its_own_flag_and_the_former_use_still_works(setup, tmp_path, capsys):
    """`--student` is a registry key; a file is `--student-checkpoint`. `--student FILE` (earlier versions)
    still trains from the file, with a warning; both at once are refused."""
    former = run_args(setup, tmp_path / "former", 1)
    former[former.index("--student-checkpoint")] = "--student"
    assert main(["distill", "train", *former]) == 0
    assert "a file is now --student-checkpoint" in capsys.readouterr().err
    both = run_args(setup, tmp_path / "both", 1, extra=["--student", "bigl_test"])
    assert main(["distill", "train", *both]) == 2
    assert "either --student (a registry key) or --student-checkpoint" in capsys.readouterr().err


def test_resume_takes_the_same_folder_however_it_is_spelled(setup, tmp_path, monkeypatch, capsys):
    """`--cache ./cache` after `--cache cache` (and the same for --images, --teacher-checkpoint) is one run."""
    monkeypatch.chdir(setup)
    args = run_args(setup, tmp_path, 1)
    args[args.index("--cache") + 1] = "cache"
    assert main(["distill", "train", *args]) == 0
    args[args.index("--cache") + 1] = "./cache"
    args[args.index("--steps") + 1] = "2"
    assert main(["distill", "train", *args, "--resume"]) == 2
    assert "steps: 1 -> 2" in capsys.readouterr().err  # the folder is not among the differences
