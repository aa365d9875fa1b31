"""The demo served on 127.0.0.1, its mask decoder compiled as `bigl-sam demo` does, and driven through its
scripted endpoint with gradio_client."""

import socket
from typing import NamedTuple

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_images import write_png_header
from torch._dynamo.utils import counters

from bigl_sam.cli import main
from bigl_sam.demo.app import build_app, image_input, launch
from bigl_sam.demo.handlers import DemoHandlers
from bigl_sam.inference import MAX_POINTS, compile_decoder
from bigl_sam.demo.models import load_demo_models
from conftest import dynamo_only_compile


class Server(NamedTuple):
    url: str
    decoder: object  # the served model's mask decoder
    compiled_graphs: int  # graphs torch.compile had made once the warm-up was over


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The one compiled decoder of this suite's served tests (by dynamo alone: `conftest.dynamo_only_compile`)."""
    workdir = tmp_path_factory.mktemp("demo-server")
    models = load_demo_models("bigl_test")
    with dynamo_only_compile():
        compile_decoder(models.main.model)
    app = build_app(DemoHandlers(models, workdir))
    yield Server(launch(app, "127.0.0.1", None, workdir, block=False), models.main.model.mask_decoder,
                 compiled_graphs())
    app.close()


@pytest.fixture(scope="module")
def server(served):
    return served.url


def saved(tmp_path, name, size, seed):
    path = tmp_path / name
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return handle_file(str(path))


def test_the_first_click_served_runs_the_warmed_up_graph(served, tmp_path):
    """Clicks come from Gradio's worker threads, on a student's embedding: before, the warm-up's embedding had
    other strides than the student's and the first click compiled the decoder a second time."""
    assert "forward" in vars(served.decoder)  # compiled
    warmed_up = served.compiled_graphs
    client = Client(served.url, verbose=False)
    photo = saved(tmp_path, "photo.png", (64, 48), 4)
    _, first = client.predict(photo, [[20, 30, 1]], None, None, api_name="/segment")
    _, second = client.predict(photo, [[20, 30, 1], [50, 10, 0]], [5, 5, 60, 40], None, api_name="/segment")
    assert first["encoded"] and not second["encoded"]
    assert compiled_graphs() == warmed_up


def bad_upload(tmp_path, kind):
    if kind is None:
        return None
    path = tmp_path / f"{kind}.png"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n then not a PNG at all")
    else:
        write_png_header(path, 20000, 20000)  # above twice PIL's pixel limit: a decompression bomb
    return handle_file(str(path))


@pytest.mark.parametrize(
    "upload, points, message",
    [
        ("good", [[1, 1]] * 100_000, f"segment: 100000 points, at most {MAX_POINTS}"),
        ("good", "[[1, 1]]", "segment: points is a str"),
        ("corrupt", [[1, 1]], "corrupt.png: not a readable image"),
        ("bomb", [[1, 1]], "bomb.png: 400,000,000 pixels, too large for SAM"),
        (None, [[1, 1]], "segment: no image given"),
    ],
)
def test_bad_calls_get_their_reason_and_the_server_stays_up(server, tmp_path, upload, points, message):
    client = Client(server, verbose=False)
    good = saved(tmp_path, "good.png", (16, 12), 5)
    with pytest.raises(AppError, match=message) as error:
        client.predict(good if upload == "good" else bad_upload(tmp_path, upload), points, None, None,
                       api_name="/segment")
    assert "\n" not in str(error.value)
    _, info = client.predict(good, [[8, 6, 1]] * MAX_POINTS, None, None, api_name="/segment")
    assert info["original_size"] == [12, 16]


def test_image_inputs_hand_the_upload_on_unopened(tmp_path):
    """Gradio's own image input opens an upload with PIL before the handler sees it, and fails there."""
    write_png_header(tmp_path / "bomb.png", 20000, 20000)
    payload = gr.Image.data_model(path=str(tmp_path / "bomb.png"), orig_name="bomb.png")
    assert image_input().preprocess(payload) == str(tmp_path / "bomb.png")
    assert image_input().preprocess(None) is None
    with pytest.raises(Image.DecompressionBombError):
        gr.Image(type="filepath", image_mode=None).preprocess(payload)


def test_two_clients_keep_their_own_embedding(server, tmp_path):
    alice, bob = Client(server, verbose=False), Client(server, verbose=False)
    wide, tall = saved(tmp_path, "wide.png", (48, 32), 1), saved(tmp_path, "tall.png", (20, 36), 2)

    mask, info = alice.predict(wide, [[24, 16, 1]], None, None, api_name="/segment")
    assert info["encoded"] and Image.open(mask).size == (48, 32)
    _, info = bob.predict(tall, [[10, 18, 1]], None, 0.5, api_name="/segment")
    assert info["encoded"] and info["keep_ratio"] == 0.5

    mask, info = alice.predict(wide, [[5, 5, 0], [24, 16, 1]], [2, 2, 40, 30], None, api_name="/segment")
    assert not info["encoded"] and Image.open(mask).size == (48, 32)  # bob's upload did not evict alice's
    mask, info = bob.predict(tall, [[3, 3]], None, 0.5, api_name="/segment")
    assert not info["encoded"] and Image.open(mask).size == (20, 36)


def test_bad_prompts_come_back_as_one_line_errors(server, tmp_path):
    client = Client(server, verbose=False)
    with pytest.raises(AppError, match="label 7"):
        client.predict(saved(tmp_path, "x.png", (8, 8), 3), [[1, 1, 7]], None, None, api_name="/segment")


def test_a_taken_port_is_one_error_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--model", "bigl_test", "--no-compile", "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot serve on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert "bigl_test: RANDOM WEIGHTS (none of bigl_test*.pth" in out  # which weights, in one line


@pytest.mark.parametrize("made", [False, True])
def test_examples_folder_without_images_is_one_error_line(tmp_path, capsys, made):
    folder = tmp_path / "examples"
    if made:
        folder.mkdir()
        (folder / "notes.txt").write_text("no image here")
    assert main(["demo", "--model", "bigl_test", "--examples", str(folder)]) == 2
    reason = "no images (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, .gif) in this folder" if made else "no such folder"
    assert capsys.readouterr().err.strip() == f"bigl-sam demo: error: --examples {folder}: {reason}"


def test_a_port_out_of_range_is_one_error_line(capsys):
    assert main(["demo", "--model", "bigl_test", "--port", "99999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bigl-sam demo: error: --port must be in 0-65535, got 99999"


def test_points_outside_the_image_come_back_as_one_line_errors(server, tmp_path):
    client = Client(server, verbose=False)
    with pytest.raises(AppError, match="outside the 8x8 image"):
        client.predict(saved(tmp_path, "x.png", (8, 8), 3), [[1e300, 4, 1]], None, None, api_name="/segment")
