"""The demo's "Everything": SAM's automatic masks coloured on the photo, on the page and through its own
endpoint, in a queue of its own, with its time estimated before it starts."""

import threading

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from bigl_sam.mask_generator_settings import AmgSettings
from bigl_sam.demo.app import build_app, launch
from bigl_sam.demo.handlers import DemoHandlers
from bigl_sam.demo.models import load_demo_models
from bigl_sam.demo.session import Session
from test_amg import SURVIVE, photo

FEW_POINTS = AmgSettings(points_per_side=2, **SURVIVE)  # random weights: thresholds that keep masks


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    torch.manual_seed(0)  # random weights under which FEW_POINTS keeps masks (not every draw does)
    handlers = DemoHandlers(load_demo_models("bigl_test"), tmp_path_factory.mktemp("demo-everything"))
    handlers.everything_settings = FEW_POINTS
    return handlers


@pytest.fixture
def photo_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo()).save(path)
    return path


def test_everything_endpoint_stands_on_its_own(handlers, photo_file):
    app = build_app(handlers)
    url = launch(app, "127.0.0.1", None, handlers.workdir, block=False)
    try:
        shown, info = Client(url, verbose=False).predict(handle_file(str(photo_file)), 0.5, api_name="/everything")
    finally:
        app.close()
    assert info["original_size"] == [120, 160] and info["mask_size"] == [120, 160] and info["keep_ratio"] == 0.5
    assert info["masks"] and all(set(m["segmentation"]) == {"size", "counts"} for m in info["masks"])
    picture = np.asarray(Image.open(shown).convert("RGB"))
    assert picture.shape == photo().shape and not np.array_equal(picture, photo())  # masks coloured in


def test_a_running_everything_does_not_hold_up_another_users_image(handlers, photo_file, monkeypatch):
    started, release = threading.Event(), threading.Event()
    everything_masks = handlers.everything_masks

    def held(*args, **kwargs):  # an Everything that runs until the other user's call is done
        started.set()
        release.wait(timeout=120)
        return everything_masks(*args, **kwargs)

    monkeypatch.setattr(handlers, "everything_masks", held)
    app = build_app(handlers)
    url = launch(app, "127.0.0.1", None, handlers.workdir, block=False)
    try:
        long_job = Client(url, verbose=False).submit(handle_file(str(photo_file)), None, api_name="/everything")
        assert started.wait(timeout=60)
        _, info = Client(url, verbose=False).predict(handle_file(str(photo_file)), [[40, 30, 1]], None, None,
                                                     api_name="/segment")
        assert info["encoded"] and not long_job.done()  # the new image was encoded while Everything ran
    finally:
        release.set()
        app.close()


def test_the_page_says_how_long_everything_will_take_before_it_starts(handlers):
    session = handlers.upload(Image.fromarray(photo()), Session())
    assert "will take about" not in handlers.view(session).status  # not measured yet
    per_prompt = handlers.decoder_seconds_per_prompt()  # as `bigl-sam demo` does at start-up
    assert per_prompt > 0 and handlers.decoder_seconds_per_prompt() == per_prompt  # measured once
    status = handlers.view(session).status
    assert (f"**Everything** will take about {session.encodings['main'].seconds + 4 * per_prompt:.0f} s here: 1 "
            f"image encoder pass and 4 point prompts at {per_prompt * 1000:.1f} ms each") in status


def test_clicking_works_after_everything(handlers):
    session = handlers.upload(Image.fromarray(photo()), Session())
    done = handlers.everything(session)
    assert done.everything is not None and handlers.view(done).image is done.everything
    clicked = handlers.click(done, 40.0, 30.0)
    assert clicked.predictions and handlers.view(clicked).image is not done.everything
    assert handlers.clear(clicked).everything is None
