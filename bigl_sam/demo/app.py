"""The Gradio page: components, their events, and the scripted `/segment` endpoint.

All logic is in `handlers`; this module only lays out the page and wires events to handler calls,
turning `BiglSamError`s into Gradio error pop-ups.
"""

from functools import partial, wraps
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

import gradio as gr

from ..errors import BiglSamError
from .api import everything, segment
from .handlers import DemoHandlers, View
from .models import untrained_banner
from .session import MODES, Session

ENCODER_CONCURRENCY = 1  # image encodes at once (each one already uses every core)
DECODER_CONCURRENCY = 4  # clicks at once (milliseconds each)
# "Everything" runs (SAM's automatic masks: minutes on a CPU) at once, in a queue of their own: a long one
# never holds up another user's upload or click (those share the cores with it for a while, nothing more).
EVERYTHING_CONCURRENCY = 1
QUEUE_SIZE = 64
MAX_UPLOAD = "20mb"
SESSION_CAPACITY = 100  # sessions kept in memory (each holds an image, its embeddings and masks)
SESSION_TTL_S = 1800  # a session's state is dropped after this long
CSS = "#bigl-image img, #bigl-compare img {cursor: crosshair}"
HELP = (
    "Upload an image or pick an example, then click on it: **positive points** mark the object, "
    "**negative points** what is not part of it, a **box** takes two clicks (opposite corners). "
    "The image is encoded once; every click after that only runs SAM's prompt encoder and mask decoder."
)


def _user_errors(fn):
    """A `BiglSamError` becomes a one-line pop-up instead of a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BiglSamError as err:
            raise gr.Error(str(err)) from None

    return wrapper


def image_input(**kwargs) -> gr.Image:
    """An image input that hands the upload on as its file's path, unopened: `bigl_sam.images.load_image` is
    the one loader (EXIF, 16-bit, RGBA), so a corrupt file or a decompression bomb gets its one-line error
    instead of failing inside Gradio's preprocessing, which opens every upload with PIL first. Set on the
    instance: Gradio writes a .pyi stub beside any module that subclasses one of its components."""
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    opened = image.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None:  # no image, or a data URL: Gradio's own handling
            return opened(payload)
        return payload.path

    image.preprocess = preprocess
    return image


class Page(NamedTuple):
    """The interactive components; `outputs` are what every page event updates."""

    state: gr.State
    image: gr.Image
    compare_image: gr.Image
    candidates: gr.Gallery
    examples: Optional[gr.Examples]
    mode: gr.Radio
    undo: gr.Button
    clear: gr.Button
    everything: gr.Button
    keep_ratio: gr.Slider
    outputs: List[gr.components.Component]  # state, then View's fields in order


def build_app(handlers: DemoHandlers, examples: Sequence[Path] = ()) -> gr.Blocks:
    with gr.Blocks(title="bigl-sam: click to segment", delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# bigl-sam: click to segment\n{HELP}")
        banner = untrained_banner(handlers.models)
        if banner:
            gr.Markdown(banner, elem_id="bigl-banner")
        _wire(_page(handlers, examples), handlers)
        _scripted_endpoints(_user_errors(partial(segment, handlers.models.main, handlers.workdir)),
                            _user_errors(partial(everything, handlers, handlers.workdir)))
    return app


def _page(handlers: DemoHandlers, examples: Sequence[Path]) -> Page:
    main, compare = handlers.models.main, handlers.models.compare
    state = gr.State(Session(), time_to_live=SESSION_TTL_S)
    example_set = None
    with gr.Row():
        with gr.Column(scale=3):
            image = image_input(
                label=f"{main.model_type}: click to segment",
                sources=["upload", "clipboard"],
                buttons=["download", "fullscreen"],
                elem_id="bigl-image",
            )
            if examples:
                example_set = gr.Examples(
                    [[str(p)] for p in examples], inputs=[image], label="Examples", elem_id="bigl-examples"
                )
        with gr.Column(scale=3, visible=compare is not None):
            compare_image = gr.Image(
                label=f"{compare.model_type}: the same clicks" if compare else "compare",
                interactive=False,
                elem_id="bigl-compare",
            )
        with gr.Column(scale=2):
            mode = gr.Radio(list(MODES), value=MODES[0], label="Click adds", elem_id="bigl-mode")
            with gr.Row():
                undo = gr.Button("Undo last click", elem_id="bigl-undo")
                clear = gr.Button("Clear clicks", elem_id="bigl-clear")
            everything = gr.Button("Everything: every mask of the image", elem_id="bigl-everything")
            keep_ratio = gr.Slider(
                0.05,
                1.0,
                value=main.model.image_encoder.keep_ratio if main.is_student else 1.0,
                step=0.05,
                label="Keep ratio: share of tokens the big P-path processes (release to re-encode)",
                visible=main.is_student,
                elem_id="bigl-keep-ratio",
            )
            download = gr.DownloadButton("Download mask (PNG)", elem_id="bigl-download")
    status = gr.Markdown(handlers.view(Session()).status, elem_id="bigl-status")
    with gr.Row():
        candidates = gr.Gallery(
            label="Candidate masks with their predicted IoU (click one to show it)",
            columns=3,
            height=260,
            allow_preview=False,
            elem_id="bigl-candidates",
        )
        routing = gr.Image(
            label="Routing map: bright tokens went through the big P-path in most layers",
            interactive=False,
            visible=main.is_student,
            elem_id="bigl-routing",
        )
    shown = dict(image=image, compare_image=compare_image, candidates=candidates, mask_png=download,
                 status=status, routing=routing)  # fmt: skip
    outputs = [state, *(shown[name] for name in View._fields)]
    return Page(state, image, compare_image, candidates, example_set, mode, undo, clear, everything, keep_ratio,
                outputs)


def _wire(page: Page, handlers: DemoHandlers) -> None:
    def show(session: Session):
        return (session, *handlers.view(session))

    @_user_errors
    def on_click(session: Session, evt: gr.SelectData):
        return show(handlers.click(session, *evt.index))

    @_user_errors
    def on_choose(session: Session, evt: gr.SelectData):
        return show(handlers.choose(session, evt.index))

    def step(handler):
        return _user_errors(lambda session, *inputs: show(handler(session, *inputs)))

    @_user_errors
    def on_upload(source, session: Session, keep_ratio: Optional[float]):
        return show(handlers.upload(source, session, keep_ratio))

    hidden = dict(api_visibility="undocumented")  # page events; /segment is the documented endpoint
    encoder = dict(concurrency_id="encoder", concurrency_limit=ENCODER_CONCURRENCY, **hidden)
    decoder = dict(concurrency_limit=DECODER_CONCURRENCY, **hidden)
    state, outputs = page.state, page.outputs
    new_image = ([page.image, state, page.keep_ratio], outputs)
    page.image.upload(on_upload, *new_image, **encoder)
    page.image.clear(on_upload, *new_image, **encoder)
    if page.examples is not None:
        page.examples.load_input_event.then(on_upload, *new_image, **encoder)
    page.keep_ratio.release(step(handlers.reencode), [state, page.keep_ratio], outputs, **encoder)
    page.image.select(on_click, [state], outputs, **decoder)
    page.compare_image.select(on_click, [state], outputs, **decoder)
    page.candidates.select(on_choose, [state], outputs, **decoder)
    page.mode.change(step(handlers.set_mode), [state, page.mode], outputs, **decoder)
    page.undo.click(step(handlers.undo), [state], outputs, **decoder)
    page.clear.click(step(handlers.clear), [state], outputs, **decoder)
    page.everything.click(step(handlers.everything), [state, page.keep_ratio], outputs, concurrency_id="everything",
                          concurrency_limit=EVERYTHING_CONCURRENCY, **hidden)


def _scripted_endpoints(segment_fn, everything_fn) -> None:
    """`/segment` for gradio_client: (image, points, box, keep_ratio) -> (mask PNG, info). Its State keeps the
    last embedding per client, so repeated calls on one image skip the encoder. `/everything`: (image,
    keep_ratio) -> (picture with every mask coloured in, info with the masks), in Everything's queue."""
    with gr.Row(visible=False):
        image = image_input(label="image")
        points = gr.JSON(label="points: [[x, y, label], ...] in image pixels, label 1 object / 0 background")
        box = gr.JSON(label="box: [x0, y0, x1, y1] or null")
        keep_ratio = gr.Number(label="keep_ratio (students; null: the model's)")
        mask = gr.Image(type="filepath", format="png", label="mask")
        info = gr.JSON(label="info")
        cache = gr.State(None, time_to_live=SESSION_TTL_S)
        button = gr.Button()
    button.click(
        segment_fn,
        [image, points, box, keep_ratio, cache],
        [mask, info, cache],
        api_name="segment",
        concurrency_id="encoder",
        concurrency_limit=ENCODER_CONCURRENCY,
    )
    with gr.Row(visible=False):
        everything_image = image_input(label="image")
        everything_ratio = gr.Number(label="keep_ratio (students; null: the model's)")
        picture = gr.Image(type="filepath", format="png", label="every mask coloured in")
        everything_info = gr.JSON(label="info")
        everything_button = gr.Button()
    everything_button.click(everything_fn, [everything_image, everything_ratio], [picture, everything_info],
                            api_name="everything", concurrency_id="everything",
                            concurrency_limit=EVERYTHING_CONCURRENCY)


def launch(app: gr.Blocks, host: str, port: Optional[int], workdir: Path, block: bool = True) -> str:
    """Serves the page (port None: the first free one from 7860) and returns its URL; with `block=False`
    it returns at once (tests), the server running in a thread."""
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=DECODER_CONCURRENCY)
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_UPLOAD,
        state_session_capacity=SESSION_CAPACITY,
        allowed_paths=[str(workdir)],
        css=CSS,
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return app.local_url
