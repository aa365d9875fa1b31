"""What each event on the page does, as plain functions of (session, input) -> session, and `view`, which
turns a session into what the page shows. Gradio is not imported here: tests call these directly.
"""

import time
from dataclasses import replace
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from ..errors import BiglSamError, check_keep_ratio
from ..images import load_image
from ..inference import Encoding, Prediction, check_point_count, decode_click, encode_image
from ..mask_generator import MaskGenerator
from ..mask_generator_settings import AmgSettings
from .models import DemoModel, DemoModels, weights_note
from .render import color_masks, draw_prompts, overlay_mask, routing_heat_map, save_mask_png, thumbnail, working_image
from .session import MODES, Session

MAIN, COMPARE = "main", "compare"
EVERYTHING = " Everything: "  # starts the note of the last "Everything" run
# The decoder's time per point prompt is measured on one batch of this many prompts (a grid of side
# TIMED_POINTS_PER_SIDE on a blank image).
TIMED_POINTS_PER_SIDE = 4


class View(NamedTuple):
    """What the page shows for a session, in the order of the app's output components."""

    image: Optional[np.ndarray]  # the main model's mask over the image, with the clicks
    compare_image: Optional[np.ndarray]  # the same clicks on the --compare model
    candidates: List[Tuple[np.ndarray, str]]  # every candidate mask with its predicted IoU
    mask_png: Optional[str]  # the chosen mask, for download
    status: str  # markdown: latencies, keep ratio, prompts, what to do next
    routing: Optional[np.ndarray]  # the routing heat map (students only)


class DemoHandlers:
    def __init__(self, models: DemoModels, workdir: Path) -> None:
        self.models = models
        self.workdir = Path(workdir)
        self.everything_settings = AmgSettings()  # SAM's generator defaults
        self._prompt_seconds: Optional[float] = None  # `decoder_seconds_per_prompt`, once measured

    def _roles(self):
        yield MAIN, self.models.main
        if self.models.compare is not None:
            yield COMPARE, self.models.compare

    # ---- events -------------------------------------------------------------------------------------

    def upload(self, source, session: Session, keep_ratio: Optional[float] = None) -> Session:
        """A new image (a path or PIL image; None when the user removed it): encode it once per model."""
        if source is None:
            return Session(mode=session.mode)
        loaded = load_image(source)
        image, scale = working_image(loaded)
        note = f"Image {_size(image)}" + (f", scaled down from {_size(loaded)}." if scale < 1 else ".")
        encodings = {role: self._encode(m, image, keep_ratio) for role, m in self._roles()}
        return Session(image=image, note=note, mode=session.mode, encodings=encodings)

    def click(self, session: Session, x: float, y: float) -> Session:
        image = _require_image(session)
        h, w = image.shape[:2]
        if not (0 <= x <= w and 0 <= y <= h):
            raise BiglSamError(f"click at ({x:g}, {y:g}) is outside the {_size(image)} image")
        prompts = session.prompts.with_click(float(x), float(y), session.mode)
        check_point_count(len(prompts.points), "click")
        return self._decode(session.push(prompts))

    def set_mode(self, session: Session, mode: str) -> Session:
        if mode not in MODES:
            raise BiglSamError(f"unknown click mode {mode!r}; choose one of: {', '.join(MODES)}")
        return replace(session, mode=mode)

    def undo(self, session: Session) -> Session:
        return self._decode(session.undo())

    def clear(self, session: Session) -> Session:
        return session.cleared()

    def reencode(self, session: Session, keep_ratio: float) -> Session:
        """The keep-ratio dial: re-encode with the student only, then replay the clicks."""
        _require_image(session)
        if not self.models.main.is_student:
            return session
        encodings = dict(session.encodings, **{MAIN: self._encode(self.models.main, session.image, keep_ratio)})
        return self._decode(replace(session, encodings=encodings))

    def everything(self, session: Session, keep_ratio: Optional[float] = None) -> Session:
        """Every mask of the image (`everything_masks`), coloured on the image until the next click."""
        image = _require_image(session)
        masks, seconds, used = self.everything_masks(image, keep_ratio)
        ratio = f" at keep ratio {used:.2f}" if used is not None else ""
        note = f"{session.note.split(EVERYTHING)[0]}{EVERYTHING}{len(masks)} masks in {seconds:.1f} s{ratio}."
        picture = color_masks(image, [m["segmentation"] for m in masks])
        return replace(session.cleared(), everything=picture, note=note)

    def everything_masks(self, image: np.ndarray, keep_ratio: Optional[float] = None):
        """SAM's automatic masks of `image` (`bigl_sam.mask_generator`, `everything_settings`) with the main model at
        `keep_ratio` (students; None: the model's): (records, seconds, keep ratio used or None)."""
        main = self.models.main
        encoder = main.model.image_encoder
        model_ratio = encoder.keep_ratio if main.is_student else None
        start = time.perf_counter()
        try:
            if main.is_student and keep_ratio is not None:
                encoder.keep_ratio = check_keep_ratio(keep_ratio, "keep ratio")
            used = encoder.keep_ratio if main.is_student else None
            masks = MaskGenerator(main.model, **self.everything_settings.as_kwargs()).generate(image)
        finally:
            if main.is_student:
                encoder.keep_ratio = model_ratio
        return masks, time.perf_counter() - start, used

    def decoder_seconds_per_prompt(self) -> float:
        """The main model's decoder time per point prompt in Everything, measured once on this machine: one
        batch of TIMED_POINTS_PER_SIDE^2 prompts of the generator on a blank image."""
        if self._prompt_seconds is None:
            side = TIMED_POINTS_PER_SIDE
            generator = MaskGenerator(self.models.main.model, points_per_side=side, points_per_batch=side * side)
            generator.generate(np.zeros((4 * side, 4 * side, 3), np.uint8))
            self._prompt_seconds = generator.seconds["decoder"] / side**2
        return self._prompt_seconds

    def everything_estimate(self, image: np.ndarray, encoder_seconds: float) -> str:
        """What Everything will cost on `image`, before it starts: one encoder pass per crop (`encoder_seconds`:
        this image's) plus the decoder per point prompt (`decoder_seconds_per_prompt`, which `bigl-sam demo`
        measures at start-up; "" until it is measured)."""
        if self._prompt_seconds is None:
            return ""
        settings = self.everything_settings
        boxes, layers = settings.crop_boxes(*image.shape[:2])
        per_side = [settings.points_per_side // settings.crop_n_points_downscale_factor**layer for layer in layers]
        prompts = sum(side * side for side in per_side)
        per_prompt = self.decoder_seconds_per_prompt()
        total = len(boxes) * encoder_seconds + prompts * per_prompt
        return (f"**Everything** will take about {_duration(total)} here: {len(boxes)} image encoder pass"
                f"{'es' if len(boxes) > 1 else ''} and {prompts} point prompts at {per_prompt * 1000:.1f} ms each "
                "(the decoder's time per prompt, measured on this server), more if many masks pass the "
                "thresholds. It runs apart from clicks and uploads, one at a time.")

    def choose(self, session: Session, index: int) -> Session:
        prediction = session.predictions.get(MAIN)
        if prediction is None or not 0 <= index < len(prediction.scores):
            raise BiglSamError(f"no candidate mask #{index + 1} to choose; click on the image first")
        return replace(session, chosen=index)

    def _encode(self, model: DemoModel, image: np.ndarray, keep_ratio: Optional[float]) -> Encoding:
        return encode_image(model.model, image, keep_ratio if model.is_student else None, model.encoder_dtype)

    def _decode(self, session: Session) -> Session:
        prompts = session.prompts
        if prompts.empty:
            return replace(session, predictions={})
        predictions = {
            role: decode_click(m.model, session.encodings[role], prompts.points, prompts.labels, prompts.box)
            for role, m in self._roles()
        }
        return replace(session, predictions=predictions)

    # ---- what the page shows ------------------------------------------------------------------------

    def view(self, session: Session) -> View:
        if session.image is None:
            main = self.models.main
            note = weights_note(main, main.model.image_encoder.keep_ratio if main.is_student else None)
            return View(None, None, [], None, f"Upload an image or pick an example to start. {note}".strip(), None)
        main = session.predictions.get(MAIN)
        chosen = session.chosen_index(MAIN)
        candidates = []
        if main is not None:
            small = thumbnail(session.image)
            for i, (mask, score) in enumerate(zip(main.masks, main.scores)):
                caption = f"#{i + 1} IoU {score:.2f}" + (" (shown)" if i == chosen else "")
                candidates.append((overlay_mask(small, thumbnail(mask)), caption))
        routing = session.encodings[MAIN].routing
        return View(
            image=self._picture(session, MAIN, chosen),
            compare_image=self._picture(session, COMPARE, session.chosen_index(COMPARE)),
            candidates=candidates,
            mask_png=None if main is None else str(save_mask_png(main.masks[chosen], self.workdir)),
            status=self._status(session),
            routing=None if routing is None else routing_heat_map(session.image, routing),
        )

    def _picture(self, session: Session, role: str, chosen: Optional[int]) -> Optional[np.ndarray]:
        if role not in session.encodings:
            return None
        prediction: Optional[Prediction] = session.predictions.get(role)
        if prediction is None and role == MAIN and session.everything is not None:
            return session.everything
        picture = session.image if prediction is None else overlay_mask(session.image, prediction.masks[chosen])
        return draw_prompts(picture, session.prompts)

    def _status(self, session: Session) -> str:
        rows = ["| model | weights | image encoder | keep ratio | decoder, last click |", "|---|---|---|---|---|"]
        for role, m in self._roles():
            encoding, prediction = session.encodings[role], session.predictions.get(role)
            ratio = "all tokens (SAM ViT)" if encoding.keep_ratio is None else f"{encoding.keep_ratio:.2f}"
            decoder = "—" if prediction is None else f"{prediction.seconds * 1000:.0f} ms"
            rows.append(f"| {m.model_type} | {m.weights_label} | {encoding.seconds * 1000:.0f} ms | {ratio} | {decoder} |")
        main = session.encodings[MAIN]
        if main.routing is not None:
            rows.append(f"\nRouting map: per layer, {main.routing.mean():.0%} of the image's {main.routing.size} tokens "
                        "(those that hold its pixels; padding is not counted) took the P-path.")
        note = weights_note(self.models.main, main.keep_ratio)
        if note:
            rows.append(f"\n{note}")
        prompts = session.prompts
        hint = "Click on the image to add a point." if prompts.empty else f"Prompts: {prompts.describe()}."
        if prompts.corner is not None:
            hint = "Click the opposite corner of the box."
        estimate = self.everything_estimate(session.image, main.seconds)
        status = "\n".join(rows) + f"\n\n**Click mode: {session.mode}.** {hint} {session.note}"
        return status + (f"\n\n{estimate}" if estimate else "")


def _require_image(session: Session) -> np.ndarray:
    if session.image is None:
        raise BiglSamError("no image yet: upload an image or pick an example first")
    return session.image


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"
