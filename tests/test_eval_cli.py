"""`bigl-sam eval coco` end to end on a generated COCO set with tiny random models: the report, resume,
sharding over ranks and bad input."""

import argparse
import os
import io
import json
import shlex
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bigl_sam.cli import main
from bigl_sam.evaluation import cli, runner
from bigl_sam.evaluation.coco import CocoInstances
from bigl_sam.pretrained import CHECKPOINT, WeightsChoice
from conftest import as_ranks
from eval_coco_data import make_coco_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco"))


def counting_encodes(monkeypatch: pytest.MonkeyPatch) -> list:
    """Counts image encodings (SamPredictor.set_image calls) made by the runner."""
    calls = []
    set_image = runner.SamPredictor.set_image

    def counting(self, image, *args, **kwargs):
        calls.append(image.shape)
        return set_image(self, image, *args, **kwargs)

    monkeypatch.setattr(runner.SamPredictor, "set_image", counting)
    return calls


@pytest.fixture
def encodes(monkeypatch):
    return counting_encodes(monkeypatch)


def eval_args(data, models, out=None, *extra):
    args = ["eval", "coco", "--images", str(data["images"]), "--annotations", str(data["annotations"])]
    for name, checkpoint in models:
        args += ["--model", name] + (["--checkpoint", str(checkpoint)] if checkpoint else [])
    return args + (["--out", str(out)] if out else []) + list(extra)


def run_eval(capsys, *args):
    code = main(eval_args(*args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def models(official_checkpoint, student_checkpoint):
    return [("vit_test", official_checkpoint("vit_test")), ("bigl_test", student_checkpoint("bigl_test"))]


@pytest.fixture(scope="module")
def first_run(data, models, tmp_path_factory):
    """One full run of both models into a fresh --out, shared by the tests that read its results."""
    out = tmp_path_factory.mktemp("eval-out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, redirect_stdout(stdout), redirect_stderr(stderr):
        encodes = counting_encodes(monkeypatch)
        assert main(eval_args(data, models, out)) == 0
    report = json.loads((out / "results.json").read_text())
    return out, report, {"stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "encodes": len(encodes)}


def scored_ids(data):
    """The default protocol (efficientvit) scores crowd annotations too; image 5's file is missing."""
    annotations = json.loads(data["annotations"].read_text())["annotations"]
    return sorted(a["id"] for a in annotations if a["area"] >= 1 and a["image_id"] != 5)


def test_report_scores_every_instance_and_lists_the_missing_image(first_run, data, models):
    out, report, _ = first_run
    assert [m["name"] for m in report["models"]] == ["vit_test", "bigl_test"]
    for model in report["models"]:
        assert model["instances"]["all"] == len(scored_ids(data))
        assert model["images"] == 5  # 1-4 and the crowd-only 6
        assert [s["file"] for s in model["skipped_images"]] == [data["missing_file"]]
        assert 0.0 <= model["miou"]["all"] <= 100.0 and 0.0 < model["encoder_share"] < 1.0
        assert not model["random_weights"]
    assert report["models"][1]["keep_ratio"] == 0.25 and report["models"][0]["keep_ratio"] is None
    assert report["dataset"]["skipped_annotations"] == {"iscrowd": 0, "area_below_1": 1}
    assert report["dataset"]["selected_images"] == 6
    assert report["dataset"]["annotations_sha256"] and "content" in report["dataset"]["run_hash_covers"]
    assert report["dtype"] == "float32" and report["protocol"]["preset"] == "efficientvit"
    assert report["protocol"]["prompt"] == "box" and report["protocol"]["select"] == "argmax"
    assert str(models[1][1]) in report["command"] and "--prompt box" in report["command"]


def test_records_hold_each_instance_once(first_run, data):
    out = first_run[0]
    for part in sorted((out / "runs").glob("*/part-0.jsonl")):
        records = [json.loads(line) for line in part.read_text().splitlines()]
        ann_ids = [i["id"] for r in records for i in r.get("instances", [])]
        assert sorted(ann_ids) == scored_ids(data)


def test_table_on_stdout_and_each_image_encoded_once_per_model(first_run):
    console = first_run[2]
    assert console["encodes"] == 2 * 5  # 5 images on disk (the 5th listed is missing), 2 models
    lines = console["stdout"].strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| vit_test |") and lines[3].startswith("| bigl_test |")
    assert "(+" in lines[3] or "(-" in lines[3]
    assert "RANDOM" not in console["stdout"] + console["stderr"]
    assert "skipped missing.png" in console["stderr"]


def test_rerun_skips_done_images_and_redoes_a_torn_one(first_run, data, models, tmp_path, capsys, encodes):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    code, _, err = run_eval(capsys, data, models, out)
    assert code == 0 and encodes == []
    assert json.loads((out / "results.json").read_text())["models"] == first_run[1]["models"]
    assert "vit_test [rank 0]: 5 of 6 images already done" in err and "bigl_test [rank 0]: 5 of 6" in err

    part = next((out / "runs").glob("bigl_test-*/part-0.jsonl"))
    lines = part.read_text().splitlines()
    last_done = next(line for line in reversed(lines) if '"instances"' in line)
    lines.remove(last_done)
    part.write_text("\n".join(lines) + "\n" + last_done[: len(last_done) // 2])  # a crash in mid-write
    code, _, _ = run_eval(capsys, data, models, out)
    assert code == 0 and len(encodes) == 1
    rerun = json.loads((out / "results.json").read_text())["models"]
    for before, after in zip(first_run[1]["models"], rerun):
        assert after["miou"] == pytest.approx(before["miou"]) and after["instances"] == before["instances"]
    assert run_eval(capsys, data, models, out)[0] == 0 and len(encodes) == 1  # the redone record is readable


def test_other_settings_do_not_mix_with_done_work(first_run, data, models, tmp_path, capsys, encodes):
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    code, _, _ = run_eval(capsys, data, models[:1], out, "--select", "single", "--max-images", "1")
    assert code == 0 and len(encodes) == 1
    assert len(list((out / "runs").iterdir())) == 3


def test_an_annotation_file_edited_in_place_starts_a_new_run(data, models, tmp_path, capsys, encodes):
    edited = dict(data, annotations=tmp_path / "instances.json")
    edited["annotations"].write_bytes(data["annotations"].read_bytes())
    out = tmp_path / "out"
    assert run_eval(capsys, edited, models[:1], out, "--max-images", "1")[0] == 0 and len(encodes) == 1
    coco = json.loads(edited["annotations"].read_text())
    coco["annotations"][0]["bbox"] = [0, 0, 10, 10]  # same path, other content
    edited["annotations"].write_text(json.dumps(coco))
    code, _, err = run_eval(capsys, edited, models[:1], out, "--max-images", "1")
    assert code == 0 and len(encodes) == 2
    assert len(list((out / "runs").iterdir())) == 2
    assert "vit_test: a new run in " in err and "made with other settings (annotations_sha256 (sha256 " in err


def test_an_image_replaced_under_its_name_is_scored_again(first_run, data, models, tmp_path, capsys, encodes):
    out, images = tmp_path / "out", tmp_path / "images"
    shutil.copytree(first_run[0], out)
    shutil.copytree(data["images"], images)
    gray = np.asarray(Image.open(images / "gray.png"))
    Image.fromarray(255 - gray).save(images / "gray.png")  # another picture, same size, same name
    code, _, err = run_eval(capsys, dict(data, images=images), models, out)
    assert code == 0 and len(encodes) == 4, err  # images 1 and 6 (both gray.png) again, for each model
    assert "2 images changed since they were scored (e.g. gray.png): scoring them again" in err


def test_weights_replaced_in_place_are_another_run(tmp_path, student_checkpoint):
    """The same path, size and modification time, other bytes: not the same weights."""
    checkpoint = tmp_path / "bigl_test.pth"
    original = student_checkpoint("bigl_test").read_bytes()
    checkpoint.write_bytes(original)
    spec = runner.ModelSpec("bigl_test", WeightsChoice("bigl_test", CHECKPOINT, tmp_path, (checkpoint,)))
    model = spec.load(torch.device("cpu"))
    stat = checkpoint.stat()
    before = spec.settings(model)
    checkpoint.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert spec.settings(model) != before


def test_skip_lines_go_through_tqdm_write(data, models, tmp_path, capsys, monkeypatch):
    written = []
    monkeypatch.setattr(runner.tqdm, "write", lambda message, file=None, **kw: written.append(message))
    code, _, _ = run_eval(capsys, data, models[:1], None, "--protocol", "efficientsam", "--max-images", "5")
    assert code == 0 and any(m.startswith("skipped missing.png") for m in written)


def test_no_readable_image_is_an_error_naming_the_folder(data, models, tmp_path, capsys):
    empty = tmp_path / "val2017"
    empty.mkdir()
    code, out, err = run_eval(capsys, dict(data, images=empty), models[:1], tmp_path / "out", "--max-images", "2")
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and out == "" and len(errors) == 1
    assert f"no image could be scored: looked in {empty}, e.g. {empty / 'gray.png'}" in errors[0]
    assert list((tmp_path / "out" / "runs").glob("*/part-0.jsonl"))  # the records of the attempt are kept


def test_exif_tagged_image_is_scored_as_stored_and_counted(first_run):
    for model in first_run[1]["models"]:
        assert model["exif_rotated_images"] == 1
        assert not any(s["file"] == "rotated.jpg" for s in model["skipped_images"])


@pytest.mark.parametrize(
    "extra",
    [["--protocol", "edgesam", "--prompt", "clicks", "--clicks", "2"], ["--protocol", "efficientsam", "--prompt", "point"],
     ["--protocol", "efficientvit", "--prompt", "clicks", "--clicks", "2"], ["--dtype", "bfloat16"]],
    ids=["edgesam", "efficientsam", "efficientvit", "bfloat16"],
)
def test_presets_and_dtype_run_and_are_recorded(data, models, tmp_path, capsys, extra):
    out = tmp_path / "out"
    code, stdout, _ = run_eval(capsys, data, models[:1], out, "--max-images", "1", *extra)
    report = json.loads((out / "results.json").read_text())
    assert code == 0 and "| vit_test |" in stdout and report["models"][0]["instances"]["all"] >= 1
    settings = json.loads(next((out / "runs").glob("vit_test-*/settings.json")).read_text())
    if "--dtype" in extra:
        assert report["dtype"] == settings["dtype"] == "bfloat16" and "--dtype bfloat16" in report["command"]
    else:
        assert report["protocol"]["preset"] == settings["protocol"]["preset"] == extra[1]


def test_random_weights_are_said_loudly(data, tmp_path, capsys):
    code, out, err = run_eval(capsys, data, [("bigl_test", None)], None, "--max-images", "1", "--prompt", "point")
    assert code == 0
    assert "bigl_test (RANDOM WEIGHTS)" in out and "RANDOM WEIGHTS" in err


def test_models_without_checkpoint_follow_the_weights_rule(data, tmp_path, capsys, student_checkpoint):
    folder = tmp_path / "weights"
    folder.mkdir()
    student = folder / "bigl_test_v2.pth"
    student.write_bytes(student_checkpoint("bigl_test").read_bytes())
    out = tmp_path / "out"
    code, table, err = run_eval(capsys, data, [("bigl_test", None)], out, "--max-images", "1",
                                "--weights-dir", str(folder))
    assert code == 0 and f"bigl_test: weights from {student}" in err and "RANDOM" not in table + err
    model = json.loads((out / "results.json").read_text())["models"][0]
    assert model["weights_files"] == [str(student)] and model["keep_ratio"] == 0.25 and not model["random_weights"]


@pytest.mark.parametrize(
    "models_of, extra, message",
    [
        (lambda m: [("vit_x", None)], [], "unknown model 'vit_x'"),
        (lambda m: [("bigl_test", m[0][1])], [], "is a SAM checkpoint, not a bigl_test student"),  # teacher weights, student name
        (lambda m: [("vit_test", m[1][1])], [], "holds a bigl_test model"),
        (lambda m: m[:1], ["--max-images", "0"], "--max-images must be at least 1"),
        (lambda m: m[:1], ["--keep-ratio", "1.5"], "--keep-ratio must be in (0, 1]"),
        (lambda m: m[:1], ["--clicks", "3"], "needs --prompt clicks"),
        (lambda m: m[:1], ["--device", "gpu7"], "'gpu7' is not a device"),
        (lambda m: m[:1], ["--protocol", "efficientsam", "--prompt", "clicks"], "defines no --prompt clicks"),
        (lambda m: m[:1], ["--protocol", "ours"], "--protocol ours was removed: it followed no paper's protocol"),
        (lambda m: m[:1], ["--protocol", "ours", "--boxes", "nope.json"], "--protocol ours was removed"),
        (lambda m: m[:1], ["--protocol", "evit"], "unknown --protocol 'evit'; choose one of efficientvit, edgesam"),
        (lambda m: m[:1], ["--boxes", "nope.json"], "detections file not found"),
        (lambda m: m[:1], ["--score-threshold", "0.5"], "--score-threshold filters the detections of --boxes"),
    ],
)
def test_bad_input_is_one_error_line(data, models, tmp_path, capsys, encodes, models_of, extra, message):
    code, out, err = run_eval(capsys, data, models_of(models), tmp_path, *extra)
    assert code == 2 and encodes == [] and out == ""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]


def test_malformed_annotations_are_one_error_line(data, models, tmp_path, capsys):
    bad = dict(data, annotations=tmp_path / "bad.json")
    bad["annotations"].write_text('{"images": [}')
    code, _, err = run_eval(capsys, bad, models[:1])
    assert code == 2 and err.startswith("bigl-sam eval: error:") and "malformed JSON" in err


def test_two_ranks_shard_and_gather_like_one_process(first_run, data, models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sharded"
    ranks = as_ranks(monkeypatch, lambda: run_eval(capsys, data, models[:1], out))
    assert [code for code, _, _ in ranks.values()] == [0, 0]
    assert "| vit_test |" in ranks[0][1] and ranks[1][1] == ""  # only rank 0 reports

    parts = [[json.loads(line)["image_id"] for line in p.read_text().splitlines()]
             for p in sorted(Path(out, "runs").glob("vit_test-*/part-*.jsonl"))]
    assert len(parts) == 2 and all(parts) and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == [1, 2, 3, 4, 5, 6]

    sharded = json.loads((out / "results.json").read_text())
    assert sharded["world_size"] == 2
    alone, together = first_run[1]["models"][0], sharded["models"][0]
    assert together["instances"] == alone["instances"]
    assert together["miou"] == pytest.approx(alone["miou"], abs=0.5)
    assert together["skipped_images"] == alone["skipped_images"]


def assert_arguments_recorded(report: dict) -> None:
    """results.json holds every option of the benchmark, and its command parses back to the same arguments."""
    benchmark = argparse.ArgumentParser()
    cli.BENCHMARKS[report["arguments"]["benchmark"]][0].add_arguments(benchmark)
    common = argparse.ArgumentParser()
    cli._add_common(common)
    dests = {action.dest for parser in (benchmark, common) for action in parser._actions} - {"help", "model", "checkpoint"}
    assert set(report["arguments"]) == dests | {"benchmark", "models"}
    words = shlex.split(report["command"])
    assert words[:2] == ["bigl-sam", "eval"]
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.recorded_arguments(parser.parse_args(words[2:])) == report["arguments"]


def test_results_record_every_parsed_argument(first_run, data, models):
    arguments = first_run[1]["arguments"]
    assert arguments["batch_size"] == 16 and arguments["device"] is None and arguments["protocol"] == "efficientvit"
    assert arguments["models"] == [{"model": name, "checkpoint": str(checkpoint)} for name, checkpoint in models]
    assert arguments["annotations"] == str(data["annotations"]) and arguments["boxes"] is None
    assert_arguments_recorded(first_run[1])


def test_options_left_out_of_the_old_command_are_recorded(data, models, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run_eval(capsys, data, models[:1], out, "--max-images", "1", "--batch-size", "3", "--device", "cpu",
                          "--select", "single")
    report = json.loads((out / "results.json").read_text())
    assert code == 0 and report["arguments"]["batch_size"] == 3 and report["arguments"]["device"] == "cpu"
    assert "--batch-size 3" in report["command"] and "--device cpu" in report["command"]
    assert_arguments_recorded(report)


class ImageCount(runner.Job):
    """A job of its own module: how many images each model read; no prompt is decoded."""

    def __init__(self, dataset: CocoInstances, max_images) -> None:
        self.dataset, self.image_ids, self.images_dir = dataset, dataset.image_ids(max_images), dataset.images_dir

    def settings(self) -> dict:
        return {"job": "image-count"}

    def image_path(self, image_id):
        return self.dataset.image_path(image_id)

    def original_size(self, image_id):
        return self.dataset.original_size(image_id)

    def score(self, predictor, image_id, clock) -> dict:
        return {"read": 1}

    def summarize(self, model_type, records, reference) -> dict:
        return {"read": sum(r.get("read", 0) for r in records), "first": reference is None}

    def markdown_table(self, models) -> str:
        return "\n".join(f"{model['label']}: {model['read']}" for model in models)

    def report_fields(self, models) -> dict:
        return {"protocol": {"job": "image-count"}, "dataset": self.dataset.report_entry(self.image_ids)}


class ImageCountBenchmark:
    @staticmethod
    def add_arguments(parser):
        parser.add_argument("--annotations", required=True, type=Path)

    @staticmethod
    def job_from_args(args):
        return ImageCount(CocoInstances(args.annotations, args.images), args.max_images)


def test_a_new_job_is_a_module_and_a_registration(data, models, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.BENCHMARKS, "count", (ImageCountBenchmark, "images read"))
    out = tmp_path / "out"
    args = eval_args(data, models, out, "--max-images", "2")
    assert main(["eval", "count"] + args[2:]) == 0
    assert capsys.readouterr().out.splitlines() == ["vit_test: 2", "bigl_test: 2"]
    report = json.loads((out / "results.json").read_text())
    assert [(m["name"], m["read"], m["first"]) for m in report["models"]] == [("vit_test", 2, True), ("bigl_test", 2, False)]
    assert report["protocol"] == {"job": "image-count"} and report["dataset"]["selected_images"] == 2
    assert report["command"].startswith("bigl-sam eval count ") and report["arguments"]["max_images"] == 2
