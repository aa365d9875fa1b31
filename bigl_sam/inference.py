"""Encode an image once, then decode any number of prompts against its embedding: the model-level work the
demo, `amg` and `bench` share (the embedding's layout, the compiled decoder, a blank encoding to warm it up).

Nothing here stores state on the model, so one model serves concurrent sessions: each session keeps its
own `Encoding` (the role `SamPredictor.set_image` plays) and passes it to `decode_click`.
"""

import logging
import time
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .distributed import autocast
from .errors import BiglSamError
from .images import sam_input
from .modeling.config import check_keep_ratio, is_student
from .modeling.encoder import BigLittleImageEncoder, routing_map
from .modeling.routing import token_extent

Size = Tuple[int, int]

# Prompt points one decode takes. Interactive use needs a few dozen at most, and the decoder's attention
# over the prompt tokens grows with the square of their count: unbounded, one request could take all memory.
MAX_POINTS = 64


@dataclass(frozen=True)
class Encoding:
    """One image's embedding, as `SamPredictor` keeps it after `set_image`."""

    features: torch.Tensor  # 1 x 256 x 64 x 64, float32, contiguous (`as_embedding`)
    original_size: Size  # (H, W) of the image
    input_size: Size  # (H, W) after resizing the long side to 1024
    routing: Optional[np.ndarray]  # h x w image tokens: share of layers that took each to the P-path; None: SAM ViT
    keep_ratio: Optional[float]  # None for SAM's own encoders
    seconds: float


@dataclass(frozen=True)
class Prediction:
    """SAM's multimask output for one prompt set."""

    masks: np.ndarray  # C x H x W bool, at the image's size
    scores: np.ndarray  # C predicted IoU
    seconds: float

    @property
    def best(self) -> int:
        return int(np.argmax(self.scores))


@torch.inference_mode()
def encode_image(
    model: Sam, image: np.ndarray, keep_ratio: Optional[float] = None, dtype: torch.dtype = torch.float32
) -> Encoding:
    """image: H x W x 3 uint8 RGB. `keep_ratio` is used by big.LITTLE students only (None: the model's).
    `dtype` other than float32 runs the image encoder under autocast; the embedding is float32 either way."""
    start = time.perf_counter()
    encoder = model.image_encoder
    x, input_size = sam_input(image, model.pixel_mean, model.pixel_std, encoder.img_size)
    x = x[None]
    routing, ratio = None, None
    with autocast(x.device, dtype):
        if is_student(encoder):
            ratio = check_keep_ratio(encoder.keep_ratio if keep_ratio is None else keep_ratio)
            features, layers = encoder.forward_with_routing(x, ratio, input_size=input_size)
            routing = _routing_over_image(layers, encoder, input_size)
        else:
            features = encoder(x)
    seconds = time.perf_counter() - start
    return Encoding(as_embedding(features), image.shape[:2], input_size, routing, ratio, seconds)


def as_embedding(features: torch.Tensor) -> torch.Tensor:
    """The one layout every embedding handed to the decoder has: float32, contiguous (a student's neck
    returns B x 256 x 64 x 64 with channels-last strides, SAM's ViT a contiguous tensor). The compiled
    decoder's graph is specialised to its input's strides, so the warm-up's embedding and every image's
    must agree, whichever encoder made them."""
    return features.to(torch.float32, memory_format=torch.contiguous_format)


def _routing_over_image(layers, encoder: BigLittleImageEncoder, input_size: Size) -> np.ndarray:
    """The routing map cropped to the tokens that hold image pixels, the ones the P-path budget is shared
    among (padding tokens only take the P-path at keep 1.0, where every token does)."""
    patch = encoder.config.p_path.patch_size
    grid = encoder.img_size // patch
    shares = routing_map(layers, (grid, grid))[0].numpy()
    rows, cols = token_extent(input_size, patch)
    return shares[:rows, :cols]


_DENSE_PE: "weakref.WeakKeyDictionary[torch.nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()


def dense_positional_encoding(model: Sam) -> torch.Tensor:
    """1 x 256 x 64 x 64, the same for every image and click: computed once per model, not on every click."""
    encoder = model.prompt_encoder
    if encoder not in _DENSE_PE:
        _DENSE_PE[encoder] = encoder.get_dense_pe()
    return _DENSE_PE[encoder]


def check_point_count(count: int, what: str) -> None:
    """`count` prompt points are more than one decode takes: a `BiglSamError` naming `MAX_POINTS`."""
    if count > MAX_POINTS:
        raise BiglSamError(f"{what}: {count} points, at most {MAX_POINTS} are taken in one prompt")


@torch.inference_mode()
def decode_click(
    model: Sam,
    encoding: Encoding,
    points: Sequence[Tuple[float, float]] = (),
    labels: Sequence[int] = (),
    box: Optional[Tuple[float, float, float, float]] = None,
) -> Prediction:
    """One click's work: prompt encoder + mask decoder + upsampling, never the image encoder.

    points: N x (x, y) in image pixels, labels: N (1 foreground, 0 background), box: x0, y0, x1, y1.
    """
    start = time.perf_counter()
    transform = ResizeLongestSide(model.image_encoder.img_size)
    point_input = None
    if len(points):
        coords = transform.apply_coords(np.asarray(points, dtype=np.float32), encoding.original_size)
        point_input = (torch.as_tensor(coords)[None], torch.as_tensor(labels, dtype=torch.int)[None])
    box_input = None
    if box is not None:
        box_input = torch.as_tensor(transform.apply_boxes(np.asarray([box], dtype=np.float32), encoding.original_size))
    sparse, dense = model.prompt_encoder(points=point_input, boxes=box_input, masks=None)
    low_res, scores = model.mask_decoder(
        image_embeddings=encoding.features,
        image_pe=dense_positional_encoding(model),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )
    masks = model.postprocess_masks(low_res, encoding.input_size, encoding.original_size) > model.mask_threshold
    return Prediction(masks[0].numpy(), scores[0].numpy(), time.perf_counter() - start)


def compile_decoder(model: Sam) -> float:
    """Compiles SAM's mask decoder with TorchInductor, shapes dynamic so that any number of clicks and a box
    share one compile, and warms it up. Its weights and outputs stay the same (to float rounding); a click
    on CPU takes about half the eager time. Returns the seconds the compile took (faster once cached on
    disk). If compiling fails (no C++ compiler, say), the decoder is left eager and the error re-raised.

    The warm-up decodes exactly as a click does (`decode_click` on an embedding made under inference mode,
    1 x 256 x 64 x 64 in `as_embedding`'s layout, like `encode_image`'s), so the compiled graph's guards
    (dtype, strides, inference flag; grad mode is set by `decode_click` itself, whatever the thread) hold
    for the first click a server's worker thread makes, and it is not compiled again.
    """
    # TorchInductor's C++ builder imports torch.utils.cpp_extension, which warns "No CUDA runtime is found"
    # on any CPU machine with a CUDA toolkit installed: a fact of the machine, not of this compile.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    decoder = model.mask_decoder
    decoder.forward = torch.compile(decoder.forward, dynamic=True)
    start = time.perf_counter()
    blank = blank_encoding(model)
    try:
        decode_click(model, blank, [(10.0, 10.0)], [1])
        decode_click(model, blank, [(10.0, 10.0), (20.0, 20.0)], [1, 0], box=(5.0, 5.0, 40.0, 40.0))
    except Exception:
        del decoder.forward
        raise
    return time.perf_counter() - start


@torch.inference_mode()
def blank_encoding(model: Sam) -> Encoding:
    """An all-zero embedding of a 1024 x 1024 image, made the way `encode_image` makes one."""
    side = model.image_encoder.img_size
    grid = model.prompt_encoder.image_embedding_size
    features = as_embedding(torch.zeros(1, model.prompt_encoder.embed_dim, *grid, device=model.device))
    return Encoding(features, (side, side), (side, side), None, None, 0.0)
