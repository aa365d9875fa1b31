"""Teacher cache: round trip, resume, --verify; and the real-shape path from cache to a loadable student."""

import errno

import numpy as np
import pytest
import torch
from PIL import Image

from bigl_sam import SamPredictor, build_model, distributed, load_sam, sam_model_registry
from bigl_sam.checkpoint import read_checkpoint
from bigl_sam.cli import main
from bigl_sam.distill.augment import augment, augmentation_seed
from bigl_sam.distill.cache import TeacherCache, list_images
from bigl_sam.distill.data import loss_region
from bigl_sam.modeling.routing import token_extent
from bigl_sam.images import sam_input
from bigl_sam.modeling import get_config

SIZES = [(48, 80), (90, 60)]  # H, W: one landscape, one portrait image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def cache(images, official_checkpoint, tmp_path_factory):
    """2 images x (original + 1 augmentation) through a vit_test teacher, 3 entries per shard."""
    out = tmp_path_factory.mktemp("cache") / "cache"
    args = ["--teacher", "vit_test", "--teacher-checkpoint", str(official_checkpoint("vit_test"))]
    assert main(["distill", "cache", *args, "--images", str(images), "--out", str(out), "--augment", "1",
                 "--shard-size", "3", "--batch", "2"]) == 0
    return out


def test_augmentation_replays_from_its_seed():
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    seed = augmentation_seed("a.jpg", 1)
    assert seed != 0 and seed != augmentation_seed("b.jpg", 1) and seed != augmentation_seed("a.jpg", 2)
    assert np.array_equal(augment(image, seed), augment(image.copy(), seed))
    assert not np.array_equal(augment(image, seed)[:20, :20], augment(image, seed + 1)[:20, :20])
    assert augment(image, augmentation_seed("a.jpg", 0)) is image


def test_image_folders_take_gifs_and_upper_case_suffixes(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("P", (8, 8)).save(tmp_path / "sub" / "a.gif")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_images(tmp_path) == ["b.JPG", "sub/a.gif"]


def test_sam_input_is_what_the_predictor_feeds_the_encoder(official_checkpoint):
    model = build_model(get_config("vit_test"))
    seen = []
    model.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0][0]))
    image = np.random.default_rng(2).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    SamPredictor(model).set_image(image)
    x, input_size = sam_input(image, model.pixel_mean, model.pixel_std, 1024)
    assert input_size == (614, 1024)
    assert torch.equal(x, seen[0])
    mask = loss_region("valid", torch.tensor([input_size]), 64, 1024)
    assert mask.shape == (1, 1, 64, 64) and mask.sum() == 39 * 64 == np.prod(token_extent(input_size, 16))


def test_cache_round_trips_embedding_seed_and_valid_region(cache, images, official_checkpoint):
    teacher = load_sam(official_checkpoint("vit_test"))
    stored = TeacherCache(cache)
    assert len(stored) == 4 and sorted(p.name for p in cache.glob("shard-?????.pt")) == ["shard-00000.pt", "shard-00001.pt"]
    for i in (0, 1, 3):
        entry = stored.entry(i)
        assert entry.seed == augmentation_seed(entry.image_id, i % 2)
        image = augment(np.asarray(Image.open(images / entry.image_id)), entry.seed)
        x, input_size = sam_input(image, teacher.pixel_mean, teacher.pixel_std, 1024)
        assert entry.input_size == input_size
        with torch.no_grad():
            expected = teacher.image_encoder(x[None])[0]
        embedding = stored.embedding(i)
        assert embedding.dtype == torch.float16 and embedding.shape == (256, 64, 64)
        assert torch.allclose(embedding.float(), expected, atol=2e-3, rtol=1e-2)


def test_rerun_skips_finished_shards_and_redoes_missing_ones(cache, images, official_checkpoint):
    first, second = cache / "shard-00000.pt", cache / "shard-00001.pt"
    kept_mtime = first.stat().st_mtime_ns
    before = torch.load(second, weights_only=True)["embeddings"]
    second.unlink()
    args = ["--teacher-checkpoint", str(official_checkpoint("vit_test")), "--images", str(images)]
    assert main(["distill", "cache", *args, "--out", str(cache), "--augment", "1", "--shard-size", "3"]) == 0
    assert first.stat().st_mtime_ns == kept_mtime
    assert torch.equal(torch.load(second, weights_only=True)["embeddings"], before)


def test_rerun_with_other_settings_is_refused(cache, images, official_checkpoint, capsys):
    args = ["--teacher-checkpoint", str(official_checkpoint("vit_test")), "--images", str(images)]
    assert main(["distill", "cache", *args, "--out", str(cache), "--augment", "2", "--shard-size", "3"]) == 2
    assert "augment: 1 -> 2" in capsys.readouterr().err


def test_verify_finds_corrupt_and_truncated_shards(cache, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in cache.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert main(["distill", "cache", "--verify", "--out", str(copy)]) == 0
    corrupt = bytearray((copy / "shard-00000.pt").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    (copy / "shard-00000.pt").write_bytes(bytes(corrupt))
    truncated = (copy / "shard-00001.pt").read_bytes()
    (copy / "shard-00001.pt").write_bytes(truncated[: len(truncated) // 3])
    capsys.readouterr()
    assert main(["distill", "cache", "--verify", "--out", str(copy)]) == 2
    out, err = capsys.readouterr()
    assert "shard-00000.pt: corrupt" in out and "shard-00001.pt: truncated" in out
    assert "2 bad shards" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_one_training_step_gives_a_checkpoint_the_registry_and_predictor_load(cache, tmp_path):
    run = tmp_path / "run"
    assert main(["distill", "train", "--student", "bigl_test", "--cache", str(cache), "--out", str(run),
                 "--steps", "1", "--batch", "1", "--holdout", "1", "--workers", "0"]) == 0
    model = sam_model_registry["bigl_test"](checkpoint=run / "final.pth")
    predictor = SamPredictor(model)
    predictor.set_image(np.zeros((32, 48, 3), dtype=np.uint8))
    masks, _, _ = predictor.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    assert masks.shape == (3, 32, 48)
    held_out = {row.split(",")[1] for row in (run / "eval.csv").read_text().splitlines()[1:]}
    assert held_out == {"0.15", "0.325", "0.5"}
    assert read_checkpoint(cache / "index.pt")["settings"]["teacher"] == "vit_test"


def _no_space_after(count, monkeypatch):
    """torch.save succeeds `count` times, then fails the way a full disk does (part of the file written)."""
    real_save, calls = torch.save, []

    def save(payload, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > count:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(payload, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_unreadable_image_is_skipped_and_listed_unless_strict(images, official_checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    args = ["distill", "cache", "--teacher-checkpoint", str(official_checkpoint("vit_test")), "--images", str(folder)]
    assert main([*args, "--out", str(tmp_path / "cache"), "--augment", "1", "--shard-size", "3"]) == 0
    out, err = capsys.readouterr()
    assert "skipped broken.png" in err and "Traceback" not in err
    assert "1 unreadable images skipped" in out
    assert (tmp_path / "cache" / "skipped.txt").read_text().startswith("broken.png: ")
    cached = TeacherCache(tmp_path / "cache")
    assert len(cached) == 4 and "broken.png" not in {entry.image_id for entry in cached.entries}

    assert main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert "broken.png: not a readable image" in capsys.readouterr().err


def test_teacher_precision_is_recorded_and_fixed_for_reruns(images, official_checkpoint, tmp_path, capsys,
                                                            monkeypatch):
    args = ["distill", "cache", "--teacher-checkpoint", str(official_checkpoint("vit_test")), "--images", str(images),
            "--out", str(tmp_path / "cache")]
    monkeypatch.setattr(distributed, "has_native_bfloat16", lambda: False)
    assert main([*args, "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().err.count("has no native bfloat16") == 1  # said once, at start-up
    assert read_checkpoint(tmp_path / "cache" / "settings.pt")["dtype"] == "bfloat16"
    assert TeacherCache(tmp_path / "cache").embedding(0).isfinite().all()
    assert main(args) == 2
    assert "dtype: 'bfloat16' -> 'float32'" in capsys.readouterr().err


def test_full_disk_in_the_cache_is_one_line_and_keeps_finished_shards(images, official_checkpoint, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "cache"
    args = ["distill", "cache", "--teacher-checkpoint", str(official_checkpoint("vit_test")), "--images", str(images),
            "--out", str(out), "--augment", "1", "--shard-size", "3"]
    _no_space_after(3, monkeypatch)  # settings, shard 0 and its check record; then shard 1 fails
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"no space left on {out} (writing shard-00001.pt)"), err
    assert sorted(p.name for p in out.iterdir()) == ["settings.pt", "shard-00000.check.pt", "shard-00000.pt"]
    monkeypatch.undo()
    kept = (out / "shard-00000.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "shard-00000.pt").stat().st_mtime_ns == kept and len(TeacherCache(out)) == 4
