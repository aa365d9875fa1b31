"""The demo's "Everything" button: SAM's automatic masks coloured on the photo, through the served app."""

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from bigl_sam.amg import AmgSettings
from bigl_sam.demo.app import build_app, launch
from bigl_sam.demo.handlers import DemoHandlers
from bigl_sam.demo.models import load_demo_models
from bigl_sam.demo.session import Session
from test_amg import SURVIVE, photo

FEW_POINTS = AmgSettings(points_per_side=2, **SURVIVE)  # random weights: thresholds that keep masks


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    handlers = DemoHandlers(load_demo_models("bigl_test"), tmp_path_factory.mktemp("demo-everything"))
    handlers.everything_settings = FEW_POINTS
    return handlers


def test_everything_button_through_the_served_app(handlers, tmp_path):
    app = build_app(handlers)
    url = launch(app, "127.0.0.1", None, handlers.workdir, block=False)
    try:
        path = tmp_path / "photo.png"
        Image.fromarray(photo()).save(path)
        client = Client(url, verbose=False)
        client.predict(handle_file(str(path)), 0.5, api_name="/on_upload")
        shown, _, _, _, status, _ = client.predict(0.5, api_name="/everything")
    finally:
        app.close()
    assert "Everything: " in status and "masks in" in status and "at keep ratio 0.50" in status
    picture = np.asarray(Image.open(shown).convert("RGB"))
    assert picture.shape == photo().shape and not np.array_equal(picture, photo())  # masks coloured in


def test_clicking_works_after_everything(handlers):
    session = handlers.upload(Image.fromarray(photo()), Session())
    done = handlers.everything(session)
    assert done.everything is not None and handlers.view(done).image is done.everything
    clicked = handlers.click(done, 40.0, 30.0)
    assert clicked.predictions and handlers.view(clicked).image is not done.everything
    assert handlers.clear(clicked).everything is None
