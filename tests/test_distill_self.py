"""Self-distillation (`distill train --teacher-checkpoint MY_SAM.pth --images DIR`): the teacher is the frozen
encoder of the SAM file the student starts from, run on the fly on the student's own input.

256 px variants of the tiny test architectures keep each step well under a second on a 2-core CPU.
"""

import argparse
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from bigl_sam import build_model, build_student_from_sam, load_sam, save_checkpoint
from bigl_sam.checkpoint import load_state_dict_into, read_checkpoint
from bigl_sam.cli import main
from bigl_sam.distill import cli as distill_cli
from bigl_sam.distill import compare as compare_module
from bigl_sam.distill import train as train_module
from bigl_sam.distill.student import build_student, student_for
from bigl_sam.distill.teacher import OnlineTeacher
from bigl_sam.distill.train import TrainConfig, resolve, train
from bigl_sam.modeling import get_config

from conftest import randomize_, rows_of, small_test_configs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 256 px SAM (the user's model), a student that starts as it, and 6 images of two shapes."""
    root = tmp_path_factory.mktemp("self")
    sam_config, student_config = small_test_configs()
    sam = randomize_(build_model(sam_config), seed=1)
    save_checkpoint(sam, root / "my_sam.pth")
    torch.manual_seed(2)
    student = build_model(student_config)  # fresh router and E-path, as build_student_from_sam makes them
    load_state_dict_into(student.image_encoder, sam.image_encoder.state_dict(), "sam", fresh=(".router.", ".little."))
    for name in ("prompt_encoder", "mask_decoder"):
        getattr(student, name).load_state_dict(getattr(sam, name).state_dict())
    save_checkpoint(student, root / "student.pth")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        shape = (48, 64, 3) if i % 2 else (64, 40, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(images / f"img{i}.png")
    return root


def config(setup, out, steps, **knobs):
    options = dict(student_checkpoint=str(setup / "student.pth"), teacher_checkpoint=str(setup / "my_sam.pth"),
                   images=str(setup / "images"), out=str(out), steps=steps, batch=2, lr=3e-3, warmup=2, holdout=1,
                   workers=0)
    return TrainConfig(**{**options, **knobs})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def encoder_weights(path):
    return {k: v for k, v in load_sam(path).state_dict().items() if k.startswith("image_encoder.")}


def test_self_distillation_lowers_the_loss_and_keeps_the_teacher_frozen(setup, tmp_path, monkeypatch):
    teachers = []

    class Recorded(OnlineTeacher):
        def __init__(self, *args):
            super().__init__(*args)
            teachers.append(self)

    monkeypatch.setattr(train_module, "OnlineTeacher", Recorded)
    train(config(setup, tmp_path, steps=30, eval_every=15, ckpt_every=15))
    log = rows(tmp_path / "train.csv")
    assert len(log) == 30 and all(row["mask"] for row in log)  # the mask-level loss is on by default here
    embedding = [float(row["mse"]) + float(row["cosine"]) for row in log]
    first, last = np.mean(embedding[:5]), np.mean(embedding[-5:])
    assert last < 0.6 * first, (first, last)
    heldout = rows(tmp_path / "eval.csv")
    assert float(heldout[-1]["loss"]) < float(heldout[0]["loss"])

    (teacher,) = teachers
    source = load_sam(setup / "my_sam.pth").image_encoder.state_dict()
    for name, value in teacher.encoder.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert not any(p.requires_grad for p in teacher.encoder.parameters())


def test_resume_in_self_distillation_ends_where_an_uninterrupted_run_does(setup, tmp_path, monkeypatch):
    steps = 6
    reference = train(config(setup, tmp_path / "reference", steps=steps, ckpt_every=3, eval_every=100))
    calls = []
    real_step = train_module.train_step

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train_module, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(setup, tmp_path / "run", steps=steps, ckpt_every=3, eval_every=100))
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert read_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == 3
    final = train(config(setup, tmp_path / "run", steps=steps, ckpt_every=3, eval_every=100, resume=True))
    assert [int(row["step"]) for row in rows(tmp_path / "run" / "train.csv")] == list(range(1, steps + 1))
    resumed, uninterrupted = encoder_weights(final), encoder_weights(reference)
    for name, value in uninterrupted.items():
        assert torch.allclose(resumed[name], value, atol=1e-6), name


def test_freeze_source_trains_only_routers_and_e_paths_and_keeps_the_source_inside(setup, tmp_path):
    def run(out, *flags):
        assert main(["distill", "train", "--student-checkpoint", str(setup / "student.pth"), "--teacher-checkpoint",
                     str(setup / "my_sam.pth"), "--images", str(setup / "images"), "--out", str(out), "--steps", "4",
                     "--batch", "2", "--lr", "3e-3", "--warmup", "1", "--holdout", "1", "--workers", "0",
                     "--eval-every", "0", *flags]) == 0
        return load_sam(out / "final.pth")

    start = load_sam(setup / "student.pth")
    image = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        source = start.image_encoder(image, keep_ratio=1.0)
    for flags, stays_source in (((), False), (("--freeze-source",), True)):
        model = run(tmp_path / ("frozen" if flags else "all"), *flags)
        before, after = start.image_encoder.state_dict(), model.image_encoder.state_dict()
        new_parts = [k for k in after if ".router." in k or ".little." in k]
        assert any(not torch.equal(after[k], before[k]) for k in new_parts)  # routers and E-paths learn either way
        source_parts = [k for k in after if k not in new_parts]
        assert all(torch.equal(after[k], before[k]) for k in source_parts) == stays_source
        with torch.no_grad():  # without the E-paths' learned updates, keep 1.0 is the source again
            for block in model.image_encoder.blocks:
                block.little.scale.zero_()
            assert torch.equal(model.image_encoder(image, keep_ratio=1.0), source) == stays_source


def test_student_is_picked_by_the_sam_files_size_and_starts_from_it(official_checkpoint, tmp_path):
    sam = official_checkpoint("vit_test")
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    cfg = TrainConfig(out=str(tmp_path / "run"), teacher_checkpoint=str(sam), images=str(tmp_path / "images"))
    resolved = resolve(cfg, OnlineTeacher(cfg.teacher_checkpoint, cfg.images))
    assert resolved.student == "bigl_test"
    assert resolved.encoder_checkpoint == resolved.decoder_checkpoint == str(sam)
    assert resolved.mask_weight == 1.0


def one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_file_that_is_not_sam_layout_is_one_error_line(setup, tmp_path, capsys):
    torch.save({"backbone.weight": torch.zeros(2)}, tmp_path / "other.pth")
    base = ["distill", "train", "--images", str(setup / "images"), "--out", str(tmp_path / "run")]
    assert main([*base, "--teacher-checkpoint", str(tmp_path / "other.pth")]) == 2
    assert "not a SAM checkpoint" in one_error_line(capsys)
    assert main([*base, "--teacher-checkpoint", str(setup / "student.pth")]) == 2
    assert "not a SAM model" in one_error_line(capsys)


def test_a_size_mismatch_is_one_error_line(setup, official_checkpoint, tmp_path, capsys):
    base = ["distill", "train", "--images", str(setup / "images"), "--out", str(tmp_path / "run")]
    # a ViT-B student from a file of another size
    assert main([*base, "--student", "bigl_b_t", "--teacher-checkpoint", str(official_checkpoint("vit_test"))]) == 2
    assert "holds a SAM vit_test, but bigl_b_t's P-path is a vit_b (use bigl_test)" in one_error_line(capsys)
    # a 256 px student against a 1024 px teacher
    assert main([*base, "--student-checkpoint", str(setup / "student.pth"),
                 "--teacher-checkpoint", str(official_checkpoint("vit_test"))]) == 2
    assert "teacher embeddings are (256, 64, 64) from 1024px inputs" in one_error_line(capsys)


def test_compare_measures_embedding_error_and_mask_agreement(official_checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(images / "0.png")  # a training image: not compared
    sam = str(official_checkpoint("vit_test"))
    args = ["distill", "compare", "--teacher-checkpoint", sam, "--student", "bigl_test", "--images", str(images),
            "--holdout", "1", "--teacher-outputs", str(tmp_path / "teacher.pt")]
    assert main([*args, "--keep-ratio", "1,0.15", "--json", str(tmp_path / "rows.json")]) == 0
    rows = {row["keep_ratio"]: row for row in json.loads((tmp_path / "rows.json").read_text())}
    assert rows[1.0]["rel_error"] < 1e-5  # at keep 1.0 a fresh student is its SAM
    assert rows[1.0]["box_iou"] == rows[1.0]["point_iou"] == 1.0
    assert rows[0.15]["rel_error"] > 1e-3 and rows[0.15]["removed"] == 0.0
    assert "| bigl_test | 0.15 |" in capsys.readouterr().out
    # the teacher's outputs are reused; another seed draws another router and E-path, the baseline is the first run
    assert main([*args, "--keep-ratio", "0.15", "--seed", "5", "--baseline", str(tmp_path / "rows.json"),
                 "--json", str(tmp_path / "again.json")]) == 0
    (again,) = json.loads((tmp_path / "again.json").read_text())
    assert again["removed"] == pytest.approx(1 - again["rel_error"] / rows[0.15]["rel_error"])
    assert again["rel_error"] != rows[0.15]["rel_error"]
    assert main([*args, "--keep-ratio", "0.5", "--baseline", str(tmp_path / "again.json")]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| bigl_test | 0.5 |")]
    assert row[0].split(" | ")[3] == "-"  # no baseline at keep 0.5
    # the kept teacher outputs are float32 ones: a bfloat16 compare must not reuse them
    assert main([*args, "--keep-ratio", "0.5", "--dtype", "bfloat16"]) == 2
    assert "made for another teacher file, other images or --dtype" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--holdout", "6", "--holdout 6: there are only 6 images"),  # as train refuses it: no training image left
        ("--holdout", "100", "--holdout 100: there are only 6 images"),
        ("--baseline", [1, 2], "--baseline {path}: not the JSON of distill compare (needs a list of rows"),
        ("--baseline", {"student": "s", "keep_ratio": 0.5, "rel_error": 1.0}, "not the JSON of distill compare"),
        ("--baseline", [{"student": "s", "keep_ratio": 0.5, "rel_error": "big"}], "not the JSON of distill compare"),
        ("--json", "folder", "--json {path}: is a folder, not a file"),
        ("--teacher-outputs", "folder", "--teacher-outputs {path}: is a folder, not a file"),
    ],
    ids=["holdout-all", "holdout-more", "baseline-list", "baseline-object", "baseline-text", "json-folder",
         "teacher-outputs-folder"],
)
def test_compare_refuses_bad_arguments_before_running_the_teacher(setup, tmp_path, capsys, monkeypatch, option,
                                                                   value, message):
    def teacher_ran(*args):
        raise AssertionError("the teacher ran before the arguments were checked")

    monkeypatch.setattr(compare_module, "load_sam_teacher", teacher_ran)
    if option == "--baseline":
        path = tmp_path / "baseline.json"
        path.write_text(json.dumps(value))
    elif value == "folder":
        path = tmp_path / "folder"
        path.mkdir()
    else:
        path = value
    args = ["distill", "compare", "--teacher-checkpoint", str(setup / "my_sam.pth"), "--student",
            str(setup / "student.pth"), "--images", str(setup / "images"), "--holdout", "2", option, str(path)]
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    assert message.format(path=path) in one_error_line(capsys)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_named_student_is_the_same_draw_in_train_and_compare(official_checkpoint):
    sam = str(official_checkpoint("vit_test"))
    first, again = (build_student("bigl_test", sam, sam, seed=0).state_dict() for _ in range(2))
    other = build_student("bigl_test", sam, sam, seed=1).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_each_sam_size_has_a_student_and_vit_h_gets_the_lean_one():
    assert {name: student_for(get_config(name), "f") for name in ("vit_b", "vit_l", "vit_h")} == {
        "vit_b": "bigl_b_t", "vit_l": "bigl_l_s", "vit_h": "bigl_h_s"}


def test_the_former_compare_flags_still_work_and_warn(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="bigl-sam distill")
    distill_cli.add_arguments(parser)
    args = parser.parse_args(["compare", "--teacher-from", "sam.pth", "--init-from", "vit.pth",
                              "--student", "bigl_test", "--images", "images"])
    assert (args.teacher_checkpoint, args.encoder_checkpoint) == ("sam.pth", "vit.pth")
    err = capsys.readouterr().err
    assert "--teacher-from is now --teacher-checkpoint" in err and "--init-from is now --encoder-checkpoint" in err
    assert main(["distill", "compare", "--student", "bigl_test", "--images", str(tmp_path)]) == 2
    assert "--teacher-checkpoint is required" in one_error_line(capsys)


@pytest.fixture(scope="module")
def full_size(official_checkpoint, tmp_path_factory):
    """A 1024 px SAM file of the test size (the registry's vit_test) and 3 images."""
    images = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(images / f"p{i}.png")
    return official_checkpoint("vit_test"), images


def _distill(full_size, out, *extra):
    sam, images = full_size
    return main(["distill", "train", "--teacher-checkpoint", str(sam), "--images", str(images), "--out", str(out),
                 "--steps", "2", "--batch", "1", "--holdout", "1", "--workers", "0", "--lr", "1e-2", "--warmup", "1",
                 "--mask-weight", "0", *extra])


def test_a_dense_student_learns_from_random_weights_with_the_teachers_decoder(full_size, tmp_path):
    """`--student vit_test` (a SAM ViT): MobileSAM's decoupled distillation, the encoder from random weights,
    the prompt encoder and mask decoder the teacher's; no keep ratio; snapshots every step (--keep-every)."""
    assert _distill(full_size, tmp_path, "--student", "vit_test", "--keep-every", "1") == 0
    teacher, student = load_sam(full_size[0]).state_dict(), load_sam(tmp_path / "final.pth")
    assert student.config.name == "vit_test"
    assert not torch.equal(student.state_dict()["image_encoder.patch_embed.proj.weight"],
                           teacher["image_encoder.patch_embed.proj.weight"])
    assert all(torch.equal(student.state_dict()[k], teacher[k]) for k in teacher if not k.startswith("image_encoder."))
    assert [row["keep_ratio"] for row in rows_of(tmp_path / "train.csv")] == ["", ""]
    assert sorted(p.name for p in tmp_path.glob("step-*.pth")) == ["step-1.pth", "step-2.pth"]
    assert load_sam(tmp_path / "step-1.pth").config.name == "vit_test"


def test_random_routing_trains_the_paths_and_leaves_the_router(full_size, tmp_path):
    """`--routing random` (the study's control): K random image tokens per layer; the router never learns."""
    assert _distill(full_size, tmp_path / "random", "--student", "bigl_test", "--routing", "random") == 0
    trained = load_sam(tmp_path / "random" / "final.pth").state_dict()
    routers = [k for k in trained if ".router." in k]
    littles = [k for k in trained if ".little." in k and k.endswith("weight")]
    torch.manual_seed(0)  # the run's --seed: the router and E-path it started from
    start = build_student_from_sam("bigl_test", full_size[0]).state_dict()
    assert routers and all(torch.equal(trained[k], start[k]) for k in routers)
    assert any(not torch.equal(trained[k], start[k]) for k in littles)


def test_a_dense_student_has_no_router_to_randomise(full_size, tmp_path, capsys):
    assert _distill(full_size, tmp_path, "--student", "vit_test", "--routing", "random") == 2
    assert "is a dense SAM ViT" in capsys.readouterr().err


def test_compare_takes_keep_ratio_as_every_command_and_its_former_plural(capsys):
    """`distill compare --keep-ratio` is spelled as bench's and export's; `--keep-ratios` still works and warns."""
    parser = argparse.ArgumentParser()
    distill_cli.add_arguments(parser)
    base = ["compare", "--teacher-checkpoint", "t.pth", "--student", "bigl_test", "--images", "images"]
    assert parser.parse_args([*base, "--keep-ratio", "0.2,1"]).keep_ratios == (0.2, 1.0)
    assert parser.parse_args([*base, "--keep-ratios", "0.3"]).keep_ratios == (0.3,)
    assert "--keep-ratios is now --keep-ratio" in capsys.readouterr().err
