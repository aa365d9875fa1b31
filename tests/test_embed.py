"""`bigl-sam embed` and predictors set from stored embeddings: the same masks as after set_image, resume after
a kill, torchrun shards, and bad embeddings refused in one line."""

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import bigl_sam.embed
import bigl_sam.embeddings
from bigl_sam import SamPredictor, build_model, build_sam, load_image, set_embedding
from bigl_sam.cli import main
from bigl_sam.embeddings import EmbeddingError, embedding_path, record_path, save_embedding
from bigl_sam.modeling import get_config
from bigl_sam.weights import folder_line, weights_dir

from conftest import as_ranks, run_torchrun

POINT = {"point_coords": np.array([[140.0, 120.0]]), "point_labels": np.array([1])}
BOX = {"box": np.array([270.0, 140.0, 470.0, 340.0])}


def photo(path: Path, seed: int, size=(375, 500)) -> Path:
    """A photo-like image of odd size: noise, a disc and a square."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.normal(120, 25, (*size, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 50, 220, 200), fill=(220, 40, 40))
    draw.rectangle((280, 150, 460, 330), fill=(30, 60, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def photos(folder: Path, count: int) -> list:
    return [photo(folder / f"img{i}.png", seed=i) for i in range(count)]


def embed(images: Path, out: Path, *extra) -> int:
    return main(["embed", "--images", str(images), "--out", str(out), *map(str, extra)])


def records(out: Path) -> dict:
    return {p.name[: -len(".json")]: json.loads(p.read_text()) for p in out.glob("*.png.json")}


def folder_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("weights folder:")]


def test_predictor_set_from_an_embedding_predicts_as_after_set_image(tmp_path, student_checkpoint, one_thread,
                                                                     capsys):
    checkpoint = student_checkpoint("bigl_test")
    image_path = photo(tmp_path / "images" / "photo.png", seed=0)
    assert embed(tmp_path / "images", tmp_path / "out", "--model", "bigl_test", "--checkpoint", checkpoint,
                 "--keep-ratio", 0.25) == 0
    assert folder_lines(capsys) == []  # --checkpoint: no weights folder searched
    record = records(tmp_path / "out")["photo.png"]
    assert record["original_size"] == [375, 500] and record["input_size"] == [768, 1024]
    assert record["keep_ratio"] == 0.25 and record["model_type"] == "bigl_test"
    assert record["weights_files"][0]["path"] == str(checkpoint) and len(record["weights_files"][0]["sha256"]) == 64

    model = build_sam("bigl_test", checkpoint)
    model.image_encoder.keep_ratio = 0.25
    from_image, from_file = SamPredictor(model), SamPredictor(model)
    from_image.set_image(load_image(image_path))
    set_embedding(from_file, embedding_path(tmp_path / "out", "photo.png"))
    assert np.array_equal(from_file.features.numpy(), from_image.features.numpy())
    assert (from_file.original_size, from_file.input_size) == (from_image.original_size, from_image.input_size)
    for prompt in (POINT, BOX):
        masks, scores, low_res = from_file.predict(**prompt)
        expected_masks, expected_scores, expected_low_res = from_image.predict(**prompt)
        assert np.array_equal(masks, expected_masks) and np.array_equal(scores, expected_scores)
        assert np.array_equal(low_res, expected_low_res)

    model.image_encoder.keep_ratio = 0.5  # the same student at another ratio: not what the file holds
    with pytest.raises(EmbeddingError, match="computed at keep ratio 0.25, this predictor runs at 0.5"):
        set_embedding(SamPredictor(model), embedding_path(tmp_path / "out", "photo.png"))


def killed_after_one_image(monkeypatch):
    """Makes the next embed run stop (KeyboardInterrupt, as a kill) once its second image's .npy is on disk
    and before its record is: the first image is done, the second is not. Returns a function undoing it."""
    real_write_text = bigl_sam.embeddings.atomic_write_text
    written = []

    def killed_at_the_second_record(path, text):
        written.append(Path(path).name)
        if len(written) == 2:
            raise KeyboardInterrupt
        return real_write_text(path, text)

    monkeypatch.setattr(bigl_sam.embeddings, "atomic_write_text", killed_at_the_second_record)
    return lambda: monkeypatch.setattr(bigl_sam.embeddings, "atomic_write_text", real_write_text)


def test_resume_after_a_kill_does_no_image_twice(tmp_path, monkeypatch, one_thread, capsys):
    photos(tmp_path / "images", 3)
    out = tmp_path / "out"
    undo = killed_after_one_image(monkeypatch)
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 130
    assert sorted(records(out)) == ["img0.png"] and embedding_path(out, "img1.png").is_file()
    first_record = record_path(out, "img0.png").stat().st_mtime_ns

    saved = []
    real_save = bigl_sam.embed.save_embedding
    undo()
    monkeypatch.setattr(bigl_sam.embed, "save_embedding", lambda out_dir, name, *rest: saved.append(name) or
                        real_save(out_dir, name, *rest))
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 0
    assert saved == ["img1.png", "img2.png"]
    assert sorted(records(out)) == ["img0.png", "img1.png", "img2.png"]
    assert record_path(out, "img0.png").stat().st_mtime_ns == first_record
    capsys.readouterr()
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 0 and saved == ["img1.png", "img2.png"]
    assert folder_lines(capsys) == [folder_line(weights_dir())]  # the folder the rule searched, once


def test_records_of_an_earlier_release_under_model_count_as_done(tmp_path, monkeypatch, one_thread):
    photos(tmp_path / "images", 2)
    out = tmp_path / "out"
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 0
    for name in ("img0.png", "img1.png"):  # as an earlier release wrote them: the registry key under "model"
        record = json.loads(record_path(out, name).read_text())
        record["model"] = record.pop("model_type")
        record_path(out, name).write_text(json.dumps(record))
    saved = []
    monkeypatch.setattr(bigl_sam.embed, "save_embedding", lambda *args: saved.append(args))
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 0 and saved == []
    predictor = SamPredictor(build_model(get_config("vit_test")))
    assert set_embedding(predictor, embedding_path(out, "img0.png")).record["model_type"] == "vit_test"


def test_a_cut_short_embedding_or_a_replaced_image_is_embedded_again(tmp_path, monkeypatch, one_thread, capsys):
    photos(tmp_path / "images", 3)
    out = tmp_path / "out"
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 0
    whole = embedding_path(out, "img0.png").read_bytes()
    embedding_path(out, "img0.png").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    photo(tmp_path / "images" / "img1.png", seed=7)  # another picture under the same name
    saved = []
    real_save = bigl_sam.embed.save_embedding
    monkeypatch.setattr(bigl_sam.embed, "save_embedding", lambda out_dir, name, *rest: saved.append(name) or
                        real_save(out_dir, name, *rest))
    capsys.readouterr()
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 0
    err = capsys.readouterr().err
    assert saved == ["img0.png", "img1.png"]
    assert "img0.png.npy: cut short or unreadable: embedding img0.png again" in err
    assert "img1.png: changed since its embedding was made: embedding it again" in err
    assert embedding_path(out, "img0.png").read_bytes() == whole


def test_a_transformers_folder_is_a_checkpoint_as_everywhere(tmp_path, official_checkpoint, one_thread):
    pytest.importorskip("transformers")
    from bigl_sam import load_sam
    from bigl_sam.hf import to_transformers

    folder = tmp_path / "sam-folder"
    to_transformers(load_sam(official_checkpoint("vit_test"))).save_pretrained(folder)
    photos(tmp_path / "images", 1)
    assert embed(tmp_path / "images", tmp_path / "out", "--model", "vit_test", "--checkpoint", folder) == 0
    assert len(records(tmp_path / "out")["img0.png"]["weights_sha256"][0]) == 64


def test_torchrun_finishes_a_half_done_folder_with_each_image_once(tmp_path, monkeypatch, one_thread):
    """The one test of the shared resumable loop (`distributed.take_unfinished`, `gather_to_main`) on a real
    process group; the other commands' tests run their ranks in one process (`conftest.as_ranks`)."""
    images = photos(tmp_path / "images", 3)
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    killed_after_one_image(monkeypatch)  # one process, then killed: img0 done, img1's .npy without its record
    assert embed(tmp_path / "images", out, "--model", "vit_test") == 130
    assert sorted(records(out)) == ["img0.png"]
    first_record = record_path(out, "img0.png").stat().st_mtime_ns

    done = run_torchrun(["embed", "--images", tmp_path / "images", "--out", out, "--model", "vit_test"])
    assert done.returncode == 0, done.stderr[-2000:]
    found = records(out)
    assert sorted(found) == [p.name for p in images]
    # sorted: broken.png, img0, img1, img2; rank r takes every second one from r, and rank 1 finds img0 done
    assert [found[p.name]["written_by"] for p in images] == [
        {"rank": 0, "world_size": 1}, {"rank": 0, "world_size": 2}, {"rank": 1, "world_size": 2}]
    assert record_path(out, "img0.png").stat().st_mtime_ns == first_record
    assert "embed [rank 1]: 1 of 2 images already done in" in done.stderr
    assert "embed [rank 0]: " not in done.stderr  # rank 0 had nothing done: no such line
    skipped = json.loads((out / "skipped.json").read_text())["skipped"]
    assert [entry["file"] for entry in skipped] == ["broken.png"]


def test_every_rank_refuses_a_folder_of_another_run_in_one_line(tmp_path, official_checkpoint, monkeypatch, capsys):
    """The folder's one record of another run (other weights) is of an image in rank 0's share: rank 1
    refuses too, rather than embed its share and then wait for rank 0 forever."""
    photos(tmp_path / "images", 2)
    out = tmp_path / "out"
    assert embed(tmp_path / "images", tmp_path / "first", "--model", "vit_test") == 0
    out.mkdir()
    for suffix in (".npy", ".json"):  # img0 only: rank 0's image
        (out / f"img0.png{suffix}").write_bytes((tmp_path / "first" / f"img0.png{suffix}").read_bytes())
    capsys.readouterr()
    finished = as_ranks(monkeypatch, lambda: (embed(tmp_path / "images", out, "--model", "vit_test", "--checkpoint",
                                                    official_checkpoint("vit_test")), capsys.readouterr().err))
    for code, stderr in finished.values():
        errors = [line for line in stderr.splitlines() if line.startswith("bigl-sam embed: error: ")]
        assert code == 2 and len(errors) == 1, stderr[-2000:]
        assert "holds embeddings of another run (img0.png: weights_sha256 ([] -> [sha256 " in errors[0], errors[0]
    assert sorted(records(out)) == ["img0.png"]  # nothing written by either rank


@pytest.fixture(scope="module")
def vit_predictor():
    return SamPredictor(build_model(get_config("vit_test")))


def stored(folder: Path, features=None, **changes) -> Path:
    """A hand-made embedding of a 375 x 500 image by vit_test; `changes` edit its record."""
    record = {"image": "a.png", "original_size": [375, 500], "input_size": [768, 1024],
              "model_type": "vit_test", "keep_ratio": None, **changes}
    features = np.zeros((1, 256, 64, 64), np.float32) if features is None else features
    return save_embedding(folder, "a.png", features, record)


@pytest.mark.parametrize("features, changes, message", [
    (np.zeros((1, 256, 32, 32), np.float32), {}, "embedding is 1 x 256 x 32 x 32, this predictor takes 1 x 256 x 64 x 64"),
    (np.zeros((1, 256, 64, 64), np.float16), {}, "embedding is float16, expected float32"),
    (None, {"model_type": "bigl_test", "keep_ratio": 0.25}, "is an embedding of bigl_test, this predictor runs vit_test"),
    (None, {"input_size": [1024, 1024]}, r"input_size \[1024, 1024\] is not original_size \[375, 500\] resized"),
    (None, {"original_size": "375x500"}, "original_size must be \\[height, width\\] in pixels"),
    (None, {"original_size": [True, True]}, "original_size must be \\[height, width\\] in pixels"),
    (None, {"original_size": [10**12, 10**12]}, "original_size: .* too large for SAM"),
    (np.full((1, 256, 64, 64), np.nan, np.float32), {}, "embedding holds NaN or infinite values"),
])
def test_an_embedding_that_does_not_fit_is_refused_in_one_line(tmp_path, vit_predictor, features, changes, message):
    if features is not None and features.dtype != np.float32:  # save_embedding writes float32 only
        path = stored(tmp_path)
        np.save(path, features)
    else:
        path = stored(tmp_path, features, **changes)
    with pytest.raises(EmbeddingError, match=message) as err:
        set_embedding(vit_predictor, path)
    assert "\n" not in str(err.value) and str(path.with_suffix("")) in str(err.value)  # a.png.npy or .json
    assert not vit_predictor.is_image_set


def test_a_predictor_whose_model_has_no_name_is_refused_in_one_line(tmp_path, vit_predictor):
    plain = copy.deepcopy(vit_predictor.model)
    del plain.config  # as segment_anything's own build_sam makes it
    with pytest.raises(EmbeddingError, match="model has no registry key .* give set_embedding\\(..., model_type="):
        set_embedding(SamPredictor(plain), stored(tmp_path))
    assert set_embedding(SamPredictor(plain), stored(tmp_path), model_type="vit_test").original_size == (375, 500)
    with pytest.warns(FutureWarning, match=re.escape("set_embedding(model=...) is now set_embedding(model_type=...)")):
        assert set_embedding(SamPredictor(plain), stored(tmp_path), model="vit_test").original_size == (375, 500)


def test_missing_or_broken_files_are_refused_in_one_line(tmp_path, vit_predictor):
    path = stored(tmp_path)
    record_path(tmp_path, "a.png").unlink()
    with pytest.raises(EmbeddingError, match="sizes record not found"):
        set_embedding(vit_predictor, path)
    record_path(tmp_path, "a.png").write_text('{"image": "a.png"}')
    with pytest.raises(EmbeddingError, match="embedding record lacks original_size, input_size, model_type, keep_ratio"):
        set_embedding(vit_predictor, path)
    stored(tmp_path)
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(EmbeddingError, match="not a readable .npy embedding"):
        set_embedding(vit_predictor, path)
    path.unlink()
    with pytest.raises(EmbeddingError, match="embedding file not found"):
        set_embedding(vit_predictor, path)


def test_embed_bad_arguments_are_one_line_exit_2(tmp_path, capsys):
    photos(tmp_path / "images", 1)
    stored(tmp_path / "out", model_type="bigl_test", keep_ratio=0.25)
    (tmp_path / "out" / "img0.png.npy").write_bytes((tmp_path / "out" / "a.png.npy").read_bytes())
    (tmp_path / "out" / "img0.png.json").write_text(json.dumps({
        "image": "img0.png", "original_size": [375, 500], "input_size": [768, 1024], "model_type": "bigl_test",
        "weights_sha256": [], "keep_ratio": 0.25, "dtype": "float32"}))
    cases = [
        (["--images", tmp_path / "nowhere", "--out", tmp_path / "x", "--model", "vit_test"], "no such folder"),
        (["--images", tmp_path / "out", "--out", tmp_path / "x", "--model", "vit_test"], "no images (.jpg, "),
        (["--images", tmp_path / "images", "--out", tmp_path / "x", "--model", "vit_test", "--keep-ratio", 0.5],
         "vit_test is SAM's own encoder"),
        (["--images", tmp_path / "images", "--out", tmp_path / "out", "--model", "vit_test"],
         "holds embeddings of another run (img0.png: keep_ratio (0.25 -> null), model_type (bigl_test -> vit_test))"),
    ]
    for arguments, message in cases:
        capsys.readouterr()
        assert main(["embed", *map(str, arguments)]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("bigl-sam embed: error: ") and message in error, error
