"""`bigl-sam train`: SAM's supervised recipe on COCO masks, for SAM ViTs and students alike."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bigl_sam import load_sam, sam_model_registry, save_checkpoint
from bigl_sam.build import build_model
from bigl_sam.checkpoint import read_checkpoint
from bigl_sam.cli import main
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.modeling import get_config
from bigl_sam.supervised.config import MaskTrainConfig
from bigl_sam.supervised.data import MaskDataset, training_images
from bigl_sam.supervised.loop import PromptedSam
from bigl_sam.supervised.prompts import corrective_points, noisy_boxes, round_kinds
from bigl_sam.training.schedule import seeded_generator
from conftest import rows_of, run_torchrun, seeded_model
from train_data import make_training_set

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--batch", "1", "--masks-per-image", "1", "--click-rounds", "1", "--mask-rounds", "0", "--workers", "0",
        "--lr", "2e-3", "--warmup", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_training_set(tmp_path_factory.mktemp("train"))


def args(data, out, steps, *extra, model="vit_test"):
    return ["train", "--model", model, "--annotations", str(data["annotations"]), "--images", str(data["images"]),
            "--out", str(out), "--steps", str(steps), *FAST, *extra]


def test_training_lowers_the_loss_and_its_checkpoint_loads_everywhere(data, tmp_path, capsys):
    out = tmp_path / "run"
    val = ["--val-annotations", str(data["annotations"]), "--val-images", str(data["images"]), "--eval-every", "20"]
    assert main(args(data, out, 20, *val)) == 0
    losses = [float(row["loss"]) for row in rows_of(out / "train.csv")]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    heldout = rows_of(out / "eval.csv")
    assert [(row["step"], row["prompt"]) for row in heldout] == [("20", "box"), ("20", "point")]
    # eval coco's default protocol scores the crowd regions too: 3 instances an image
    assert all(0 <= float(row["miou"]) <= 100 and row["instances"] == "12" for row in heldout)
    final = out / "final.pth"
    assert load_sam(final).config.name == "vit_test"
    sam_model_registry["vit_test"](checkpoint=final)
    assert main(["eval", "coco", "--model", "vit_test", "--checkpoint", str(final), "--annotations",
                 str(data["annotations"]), "--images", str(data["images"]), "--out", str(tmp_path / "eval")]) == 0
    assert main(["embed", "--model", "vit_test", "--checkpoint", str(final), "--images", str(data["images"]),
                 "--out", str(tmp_path / "embed")]) == 0
    assert len(list((tmp_path / "embed").glob("*.npy"))) == 4


def test_sigkill_then_resume_continues_bit_identically(data, tmp_path):
    steps, every = 8, ["--ckpt-every", "2"]
    assert main(args(data, tmp_path / "reference", steps, *every)) == 0
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "bigl_sam.cli", *args(data, run, steps, *every)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    deadline = time.time() + 240
    while not (run / "ckpt.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved = read_checkpoint(run / "ckpt.pt")["step"]
    assert 2 <= saved < steps and not (run / "final.pth").exists()
    assert main(args(data, run, steps, *every, "--resume")) == 0
    assert [int(row["step"]) for row in rows_of(run / "train.csv")] == list(range(1, steps + 1))
    resumed, uninterrupted = load_sam(run / "final.pth").state_dict(), load_sam(tmp_path / "reference" / "final.pth")
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed[name], value), name


def test_two_torchrun_processes_train_one_model(data, tmp_path):
    """One process per GPU (gloo on a CPU): the processes end with the same weights (checked before saving),
    one final.pth, every step logged once."""
    out = tmp_path / "ddp"
    result = run_torchrun(args(data, out, 2))
    assert result.returncode == 0, result.stderr[-2000:]
    assert [row["step"] for row in rows_of(out / "train.csv")] == ["1", "2"]
    assert load_sam(out / "final.pth").config.name == "vit_test"


def test_frozen_parts_stay_as_they_were_and_are_not_in_the_optimizer(data, tmp_path):
    start = tmp_path / "start.pth"
    save_checkpoint(seeded_model("vit_test", 3), start)
    out = tmp_path / "run"
    assert main(args(data, out, 2, "--checkpoint", str(start), "--train", "decoder")) == 0
    before, after = load_sam(start).state_dict(), load_sam(out / "final.pth").state_dict()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"mask_decoder"}
    optimizer = read_checkpoint(out / "ckpt.pt")["optimizer"]
    in_optimizer = sum(len(group["params"]) for group in optimizer["param_groups"])
    model = build_model(get_config("vit_test"))
    assert in_optimizer == len(list(model.mask_decoder.parameters()))


def test_a_student_trains_at_keep_ratios_drawn_from_the_range(data, tmp_path):
    out = tmp_path / "run"
    assert main(args(data, out, 3, "--keep-ratio-range", "0.2,0.4", model="bigl_test")) == 0
    ratios = [float(row["keep_ratio"]) for row in rows_of(out / "train.csv")]
    assert all(0.2 <= r <= 0.4 for r in ratios) and len(set(ratios)) == 3
    student = load_sam(out / "final.pth")
    assert student.config.name == "bigl_test" and student.image_encoder.keep_ratio == 0.25


def test_augmented_masks_stay_on_their_objects(data):
    """Crops, flips and pasted instances move the masks with the pixels: the square's cells are yellow."""
    dataset = CocoInstances(data["annotations"], data["images"])
    ids, _ = training_images(dataset, None)
    model = build_model(get_config("vit_test"))
    samples = MaskDataset(dataset, ids, 1024, model.pixel_mean, model.pixel_std, seed=0, masks_per_image=8,
                          flip=0.5, min_crop=0.6, copy_paste=0.5)
    sides = set()
    for epoch in range(8):
        sample = samples[(0, epoch)]
        pixels = sample["image"] * model.pixel_std.view(3, 1, 1) + model.pixel_mean.view(3, 1, 1)
        cells = torch.nn.functional.avg_pool2d(pixels[None], 4)[0]  # the low-res grid of the masks
        yellow = (cells[0] > 180) & (cells[1] > 170) & (cells[2] < 120)
        blue = (cells[2] > 100) & (cells[0] < 70)
        for mask, box in zip(sample["masks"], sample["boxes"]):
            inside = yellow[mask].float().mean().item() + blue[mask].float().mean().item()
            assert inside > 0.8, (epoch, inside)
            if yellow[mask].float().mean() > 0.8:  # a square: left of the middle unless flipped
                sides.add((box[0] + box[2]).item() / 2 > sample["input_size"][1].item() / 2)
    assert sides == {False, True}


def test_leaving_out_a_held_out_sets_images_by_name_or_content(data, tmp_path):
    """A held-out photo is left out under its own name, and under another name too (a dataset may hold one
    photo twice, as COCO_MVal holds some under another object's name)."""
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    (held_out / "img1.png").write_bytes((data["images"] / "img1.png").read_bytes())
    (held_out / "renamed.png").write_bytes((data["images"] / "img3.png").read_bytes())
    ids, excluded = training_images(CocoInstances(data["annotations"], data["images"]), held_out)
    assert ids == [1, 3] and excluded == 2


def test_prompts_follow_sams_recipe():
    generator = seeded_generator(0, 0)
    kinds = round_kinds(8, 2, generator)
    assert len(kinds) == 10 and kinds.count(False) == 2 and kinds[-1] is False
    boxes = torch.tensor([[100.0, 100.0, 150.0, 150.0], [0.0, 0.0, 1000.0, 1000.0]]).repeat(500, 1)
    noisy = noisy_boxes(boxes, 0.1, 1024, generator)
    shift = (noisy - boxes).abs()
    assert shift.max() <= 20 + 1e-4 and shift[1::2].max() == pytest.approx(20)  # the cap binds on the big box
    assert 0.08 < ((noisy - boxes)[0::2, 0] / 50).std() < 0.12  # 10% of the 50-pixel side
    gt = torch.zeros(3, 8, 8, dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    pred = gt.clone()
    pred[0] = False  # missed everything: a positive click inside the object
    pred[1, 0, 0] = True  # one cell of spill-over: a negative click there
    points, labels = corrective_points(pred, gt, generator)
    assert labels[:, 0].tolist() == [1, 0, -1]  # the exact mask gets no click
    cell = (points[:, 0] // 4).long()
    assert gt[0, cell[0, 1], cell[0, 0]] and cell[1].tolist() == [0, 0]


def test_each_mask_is_prompted_prompts_per_mask_times_with_its_own_draws(monkeypatch):
    seen = []

    def record(self, embedding, gt, boxes, kinds, generator):
        seen.append((len(gt), boxes))
        return {name: torch.tensor(0.0) for name in ("loss", "focal", "dice", "iou_mse", "iou_first", "iou_last")}

    monkeypatch.setattr(PromptedSam, "_rounds", record)
    cfg = MaskTrainConfig(out="x", model="vit_test", annotations="a", images="i", prompts_per_mask=3, box_share=1.0)
    masks = [torch.ones(2, 256, 256, dtype=torch.bool)]
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 32.0, 32.0]])]
    model = build_model(get_config("vit_test"))
    PromptedSam(model, cfg)(torch.zeros(1, 3, 1024, 1024), torch.tensor([[1024, 1024]]), masks, boxes, None,
                            seeded_generator(0, 0))
    [(count, tight)] = seen
    assert count == 6 and torch.equal(tight, boxes[0].repeat(3, 1))  # noise is drawn later, per prompt


@pytest.mark.parametrize("case, message", [
    ("crowd_only", "no image with a scorable"),
    ("missing_images", "training images are not found"),
    ("unknown_model", "--model vit_q: unknown"),
    ("unknown_part", "--train encoder,neck: parts are"),
    ("malformed", "malformed JSON"),
    ("val_alone", "--val-annotations and --val-images go together"),
    ("ratio_for_sam", "only big.LITTLE students route tokens"),
])
def test_bad_input_is_one_line_and_exit_2(data, tmp_path, capsys, case, message):
    import json
    annotations, images, extra, model = data["annotations"], data["images"], [], "vit_test"
    if case == "crowd_only":
        content = json.loads(annotations.read_text())
        content["annotations"] = [a for a in content["annotations"] if a["iscrowd"]]
        annotations = tmp_path / "crowd.json"
        annotations.write_text(json.dumps(content))
    elif case == "missing_images":
        images = tmp_path
    elif case == "unknown_model":
        model = "vit_q"
    elif case == "unknown_part":
        extra = ["--train", "encoder,neck"]
    elif case == "malformed":
        annotations = tmp_path / "bad.json"
        annotations.write_text("{not json")
    elif case == "val_alone":
        extra = ["--val-annotations", str(annotations)]
    elif case == "ratio_for_sam":
        extra = ["--keep-ratio-range", "0.1,0.2"]
    command = ["train", "--model", model, "--annotations", str(annotations), "--images", str(images),
               "--out", str(tmp_path / "run"), "--steps", "1", *FAST, *extra]
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_resume_with_other_settings_or_other_data_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(data, out, 1)) == 0
    assert main(args(data, out, 1)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(args(data, out, 2, "--resume")) == 2
    assert "steps: 1 -> 2" in capsys.readouterr().err
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    (held_out / "img0.png").write_bytes(b"")
    assert main(args(data, out, 1, "--resume", "--exclude", str(held_out))) == 2
    assert "data:" in capsys.readouterr().err
