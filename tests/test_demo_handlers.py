"""The demo's event handlers, called directly: no server, tiny random models."""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from bigl_sam.cli import main
from bigl_sam.demo import render
from bigl_sam.demo.api import segment
from bigl_sam.demo.handlers import COMPARE, MAIN, DemoHandlers
from bigl_sam.inference import MAX_POINTS
from bigl_sam.demo.models import load_demo_models
from bigl_sam.demo.render import overlay_mask, routing_heat_map
from bigl_sam.demo.session import BOX, NEGATIVE, Prompts, Session
from bigl_sam.errors import BiglSamError, CheckpointError


def picture(width, height, mode="RGB"):
    rng = np.random.default_rng(width * 1000 + height)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None).convert(mode)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return DemoHandlers(load_demo_models("bigl_test"), tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def compare(tmp_path_factory):
    torch.manual_seed(0)  # random weights whose masks are not all empty
    return DemoHandlers(load_demo_models("bigl_test", compare="vit_test"), tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="module")
def uploaded(student):
    """A 40 x 30 image, encoded once for the whole module (square-ish inputs are cheap to draw)."""
    return student.upload(picture(40, 30), Session())


def test_upload_encodes_once_and_clicks_only_decode(student, uploaded):
    session = student.click(uploaded, 10, 12)
    session = student.click(session, 30, 5)
    assert session.encodings[MAIN] is uploaded.encodings[MAIN]
    prediction = session.predictions[MAIN]
    assert prediction.masks.shape == (3, 30, 40) and prediction.masks.dtype == bool
    assert prediction.scores.shape == (3,)
    assert session.prompts.points == ((10.0, 12.0), (30.0, 5.0)) and session.prompts.labels == (1, 1)


def test_view_shows_overlay_candidates_download_and_routing(student, uploaded):
    session = student.click(uploaded, 20, 15)
    view = student.view(session)
    chosen = session.chosen_index(MAIN)
    mask = session.predictions[MAIN].masks[chosen]
    assert view.image.shape == (30, 40, 3)
    assert not np.array_equal(view.image, uploaded.image)  # the click's marker at least
    assert len(view.candidates) == 3 and "(shown)" in view.candidates[chosen][1]
    assert "IoU" in view.candidates[0][1]
    assert f"{session.encodings[MAIN].routing.mean():.0%} of the image's 3072 tokens" in view.status
    assert np.array_equal(np.asarray(Image.open(view.mask_png)) > 0, mask)
    assert view.routing.shape == (30, 40, 3)
    assert "bigl_test" in view.status and "untrained" in view.status and "1 positive" in view.status


def test_negative_points_undo_and_clear(student, uploaded):
    session = student.click(uploaded, 5, 5)
    session = student.click(student.set_mode(session, NEGATIVE), 35, 25)
    assert session.prompts.labels == (1, 0)
    undone = student.undo(session)
    assert undone.prompts.labels == (1,) and undone.predictions[MAIN].masks.shape == (3, 30, 40)
    empty = student.undo(student.undo(undone))
    assert empty.prompts.empty and not empty.predictions
    cleared = student.clear(session)
    assert cleared.prompts.empty and not cleared.predictions and cleared.image is session.image
    assert student.view(cleared).mask_png is None


def test_box_takes_two_clicks_in_any_order(student, uploaded):
    session = student.click(student.set_mode(uploaded, BOX), 30, 25)
    assert session.prompts.corner == (30.0, 25.0) and not session.predictions
    assert "opposite corner" in student.view(session).status
    session = student.click(session, 8, 4)
    assert session.prompts.box == (8.0, 4.0, 30.0, 25.0) and session.prompts.corner is None
    assert session.predictions[MAIN].masks.shape == (3, 30, 40)
    assert student.undo(session).prompts.corner == (30.0, 25.0)


def test_choosing_a_candidate_changes_the_shown_mask(student, uploaded):
    session = student.click(uploaded, 20, 15)
    other = (session.chosen_index(MAIN) + 1) % 3
    chosen = student.choose(session, other)
    assert chosen.chosen_index(MAIN) == other
    shown = np.asarray(Image.open(student.view(chosen).mask_png)) > 0
    assert np.array_equal(shown, session.predictions[MAIN].masks[other])
    assert student.click(chosen, 1, 1).chosen is None  # a new click shows the best mask again
    with pytest.raises(BiglSamError, match="#4"):
        student.choose(session, 3)


@pytest.mark.parametrize("width, height, tokens", [(40, 30, (48, 64)), (30, 40, (64, 48)), (64, 36, (36, 64))])
def test_routing_map_and_status_count_image_tokens_only(student, width, height, tokens):
    """A non-square image: SAM pads it to 1024 x 1024; every layer's P-path budget, ceil(keep x image tokens),
    goes to tokens that hold image pixels, so the map over those tokens has exactly the keep ratio."""
    session = student.upload(picture(width, height), Session(), keep_ratio=0.25)
    routing = session.encodings[MAIN].routing
    image_tokens = tokens[0] * tokens[1]
    assert routing.shape == tokens
    assert routing.sum() == pytest.approx(math.ceil(0.25 * image_tokens))  # per layer, on average: exactly K
    status = student.view(session).status
    assert f"per layer, 25% of the image's {image_tokens} tokens (those that hold its pixels" in status


def test_keep_ratio_dial_reencodes_and_replays_clicks(student):
    square = student.click(student.upload(picture(32, 32), Session(), keep_ratio=0.25), 16, 16)
    assert square.encodings[MAIN].routing.mean() == pytest.approx(0.25, abs=0.01)
    wider = student.reencode(square, 0.75)
    assert wider.encodings[MAIN].keep_ratio == 0.75
    assert wider.encodings[MAIN].routing.mean() == pytest.approx(0.75, abs=0.01)
    assert wider.prompts == square.prompts and wider.predictions[MAIN] is not square.predictions[MAIN]
    with pytest.raises(BiglSamError, match="keep ratio"):
        student.reencode(square, 1.5)


def test_compare_mode_runs_the_same_clicks_on_the_compare_model(compare):
    session = compare.click(compare.upload(picture(24, 24), Session()), 12, 12)
    assert set(session.encodings) == set(session.predictions) == {MAIN, COMPARE}
    assert session.encodings[COMPARE].keep_ratio is None and session.encodings[COMPARE].routing is None
    assert not np.array_equal(session.predictions[MAIN].masks, session.predictions[COMPARE].masks)
    view = compare.view(session)
    assert view.compare_image.shape == (24, 24, 3)
    assert "vit_test" in view.status and "all tokens" in view.status


def test_user_mistakes_are_one_line_errors(student, uploaded, tmp_path):
    with pytest.raises(BiglSamError, match="no image yet"):
        student.click(Session(), 1, 1)
    with pytest.raises(BiglSamError, match=r"outside the 40x30 image"):
        student.click(uploaded, 41, 3)
    with pytest.raises(BiglSamError, match="unknown click mode"):
        student.set_mode(uploaded, "lasso")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(BiglSamError, match="broken.png"):
        student.upload(str(broken), uploaded)
    assert student.upload(None, uploaded).image is None


def test_a_click_past_the_point_limit_is_refused_and_the_session_kept(student, uploaded):
    full = uploaded.push(Prompts(points=((5.0, 5.0),) * MAX_POINTS, labels=(1,) * MAX_POINTS))
    with pytest.raises(BiglSamError, match=f"click: {MAX_POINTS + 1} points, at most {MAX_POINTS}"):
        student.click(full, 10, 10)
    assert student.click(student.set_mode(full, BOX), 10, 10).prompts.corner == (10.0, 10.0)  # a box is no point


def test_uploads_of_any_kind_become_upright_rgb(student, tmp_path, monkeypatch):
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated by 90 degrees
    picture(40, 20).save(rotated, exif=exif)
    assert student.upload(str(rotated), Session()).image.shape == (40, 20, 3)
    assert student.upload(picture(20, 10, "RGBA"), Session()).image.shape == (10, 20, 3)
    monkeypatch.setattr(render, "MAX_SIDE", 50)
    big = student.upload(picture(200, 100, "L"), Session())
    assert big.image.shape == (25, 50, 3) and big.note == "Image 50x25, scaled down from 200x100."


def test_scripted_segment_reuses_the_embedding_and_answers_at_full_size(student, monkeypatch):
    monkeypatch.setattr(render, "MAX_SIDE", 50)
    image = picture(100, 60)
    main, workdir = student.models.main, student.workdir
    path, info, cache = segment(main, workdir, image, [[50, 30], [10, 10, 0]], None)
    assert info["encoded"] and info["original_size"] == [60, 100] and len(info["scores"]) == 3
    assert Image.open(path).size == (100, 60)
    _, again, cache_again = segment(main, workdir, image, [[50, 30]], [0, 0, 80, 50], cache=cache)
    assert not again["encoded"] and cache_again is cache
    assert info["encoder_ms"] > 0 and again["encoder_ms"] == 0.0  # this call's encoder time: none
    _, other, _ = segment(main, workdir, picture(60, 100), [[5, 5]], None, cache=cache)
    assert other["encoded"]


@pytest.mark.parametrize(
    "points, box, message",
    [
        ([[1, 2, 3]], None, "label 3"),
        ([[1]], None, r"point #1 is \[1\]"),
        ("[[1, 2]]", None, "points is a str, expected a list"),
        ([[1, 1]] * (MAX_POINTS + 1), None, f"{MAX_POINTS + 1} points, at most {MAX_POINTS}"),
        ([["a", 2]], None, "point #1 x"),
        ([], [1, 2, 3], "box is"),
        ([], None, "at least one point or a box"),
        ([[9, 2]], None, r"point #1 \(9, 2\) is outside the 8x8 image"),
        ([[1, 1], [1e308, -1e308, 0]], None, r"point #2 \(1e\+308, -1e\+308\) is outside the 8x8 image"),
        ([], [0, 0, 100, 4], r"box corner \(100, 4\) is outside the 8x8 image"),
    ],
)
def test_scripted_segment_rejects_bad_prompts(student, points, box, message):
    with pytest.raises(BiglSamError, match=message):
        segment(student.models.main, student.workdir, picture(8, 8), points, box)


def test_bad_checkpoint_is_one_error_line_and_exit_code_2(tmp_path, capsys, official_checkpoint):
    broken = tmp_path / "bigl_test.pth"
    broken.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="bigl_test.pth"):
        load_demo_models("bigl_test", broken)
    assert main(["demo", "--model", "bigl_test", "--checkpoint", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bigl-sam demo: error:") and "bigl_test.pth" in err and len(err.splitlines()) == 1
    assert main(["demo", "--model", "bigl_test", "--checkpoint", str(official_checkpoint("vit_test"))]) == 2
    assert "is a SAM checkpoint, not a bigl_test student" in capsys.readouterr().err
    assert main(["demo", "--model", "vit_test", "--keep-ratio", "0.5"]) == 2
    assert main(["demo", "--model", "bigl_test", "--compare-checkpoint", str(broken)]) == 2


def test_overlay_tints_only_the_mask_and_heat_map_follows_routing():
    image = np.full((20, 20, 3), 100, dtype=np.uint8)
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    out = overlay_mask(image, mask)
    assert (out[10, 10] != image[10, 10]).any() and (out[0, 0] == image[0, 0]).all()
    shares = np.array([[0.0, 1.0]])
    heat = routing_heat_map(image, shares).astype(int)
    assert heat[10, 15].sum() > heat[10, 4].sum()


def test_concurrent_sessions_get_the_masks_they_would_get_alone(student, uploaded):
    other = student.upload(picture(24, 24), Session())
    jobs = [(uploaded, 10, 10), (other, 5, 20), (uploaded, 30, 20), (other, 12, 12)]
    alone = [student.click(session, x, y).predictions[MAIN].masks for session, x, y in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda job: student.click(*job).predictions[MAIN].masks, jobs))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_bfloat16_encoder_gives_a_float32_embedding_close_to_float32s(tmp_path):
    """At keep 1.0, so that rounding cannot change which tokens a random router picks."""
    image = picture(40, 30)
    embeddings = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        handlers = DemoHandlers(load_demo_models("bigl_test", encoder_dtype=dtype), tmp_path)
        embeddings[dtype] = handlers.upload(image, Session(), keep_ratio=1.0).encodings[MAIN].features
    full, half = embeddings[torch.float32], embeddings[torch.bfloat16]
    assert half.dtype == torch.float32 and not torch.equal(full, half)  # autocast ran, and was cast back
    assert torch.nn.functional.cosine_similarity(full.flatten(), half.flatten(), dim=0) > 0.99


def test_two_sessions_saving_the_same_mask_at_once_get_one_good_file(tmp_path):
    mask = np.random.default_rng(0).random((300, 400)) > 0.5
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda _: render.save_mask_png(mask, tmp_path), range(16)))
    assert len(set(paths)) == 1 and np.array_equal(np.asarray(Image.open(paths[0])) > 0, mask)
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # no temp file left behind
