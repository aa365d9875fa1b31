"""A model built here as a Hugging Face `transformers.SamModel`, and a `SamModel` back (the `[hf]` extra).

    from transformers import SamImageProcessor, SamProcessor
    from bigl_sam import load_sam
    from bigl_sam.hf import to_transformers

    model = to_transformers(load_sam("bigl_b_t.pth"))   # a transformers.SamModel
    model.vision_encoder.keep_ratio = 0.25               # the dial
    processor = SamProcessor(image_processor=SamImageProcessor())
    inputs = processor(images=image, input_points=[[[450, 600]]], return_tensors="pt")
    outputs = model(**inputs)                            # pred_masks, iou_scores as from SAM

A student's `SamModel` runs its big.LITTLE encoder behind transformers' vision-encoder interface
(`BigLittleVisionEncoder`), so `forward`, `get_image_embeddings`, `SamProcessor` and
`pipeline("mask-generation", model=model, image_processor=SamImageProcessor())` work unchanged; its prompt
encoder and mask decoder are transformers' own, holding the student's weights. SamProcessor pads the
normalised image with exact zeros at the bottom and right, which is where the encoder reads the image's
extent off. A SAM ViT (`load_sam` of an official file) becomes a plain `SamModel`: `save_pretrained` then
writes the folder transformers users load.
"""

from typing import Optional

from segment_anything.modeling import Sam
from torch import nn
from transformers import SamConfig, SamModel
from transformers.models.sam.modeling_sam import SamVisionEncoderOutput

from .build import build_model, build_student_from_sam, load_sam
from .checkpoint import ModelWeights, load_state_dict_into
from .hf_layout import HF_VISION_PREFIX, hf_vision_config, to_hf, to_official, vit_config_from_hf
from .modeling import BigLittleImageEncoder, is_student
from .modeling.config import sam_vit_config
from .pretrained import UNTRAINED_ROUTER_KEEP_RATIO

SOURCE = "transformers.SamModel"  # how messages name an in-memory SamModel


class BigLittleVisionEncoder(nn.Module):
    """transformers' `SamVisionEncoder` interface around a `BigLittleImageEncoder`: pixel_values
    B x 3 x 1024 x 1024 (SamProcessor's) -> `SamVisionEncoderOutput`, last_hidden_state B x 256 x 64 x 64."""

    def __init__(self, encoder: BigLittleImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    @property
    def keep_ratio(self) -> float:
        """Share of each image's tokens the P-path runs on, in (0, 1]."""
        return self.encoder.keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, ratio: float) -> None:
        self.encoder.keep_ratio = ratio

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.patch_embed

    def forward(self, pixel_values=None, **kwargs) -> SamVisionEncoderOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        return SamVisionEncoderOutput(last_hidden_state=self.encoder(pixel_values))


def to_transformers(model: Sam) -> SamModel:
    """`model` (a student or a SAM ViT built here) as a `SamModel` in eval mode. A student's `SamModel`
    shares the student's image encoder (the same module, so the same dial); its other weights are copied."""
    config = model.config
    student = is_student(config)
    vit = sam_vit_config(config)
    hf = SamModel(SamConfig(vision_config=hf_vision_config(vit)))  # prompt encoder and decoder: SAM's sizes
    state = model.state_dict()
    if student:
        hf.vision_encoder = BigLittleVisionEncoder(model.image_encoder)
        state = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
    fresh = (HF_VISION_PREFIX,) if student else ()  # a student's encoder is shared, not loaded
    load_state_dict_into(hf, to_hf(state), f"{config.name} model", fresh=fresh)
    return hf.eval()


def from_transformers(model: SamModel, student: Optional[str] = None) -> Sam:
    """A `SamModel` as a model built here (segment_anything's `Sam`, with `model.config`), in eval mode.

    A student's `SamModel` (`to_transformers`) gives the student back (weights copied). A plain SamModel gives
    the SAM ViT it is, or with `student` (a registry name such as "bigl_b_t") a student built from it as
    `build_student_from_sam` builds one: exactly that SAM at keep ratio 1.0, which it starts at.
    """
    hf_state = model.state_dict()
    if isinstance(model.vision_encoder, BigLittleVisionEncoder):
        encoder = model.vision_encoder.encoder
        prefix = HF_VISION_PREFIX + "encoder."
        rest = {k: v for k, v in hf_state.items() if not k.startswith(HF_VISION_PREFIX)}
        state = {**{"image_encoder." + k[len(prefix):]: v for k, v in hf_state.items() if k.startswith(prefix)},
                 **to_official(rest, SOURCE)}
        sam = build_model(encoder.config)
        load_state_dict_into(sam, state, SOURCE)
        sam.image_encoder.keep_ratio = encoder.keep_ratio
        return sam
    weights = ModelWeights(vit_config_from_hf(model.config.to_dict(), SOURCE), to_official(hf_state, SOURCE), SOURCE)
    if student is None:
        return load_sam(weights).eval()
    sam = build_student_from_sam(student, weights)
    sam.image_encoder.keep_ratio = UNTRAINED_ROUTER_KEEP_RATIO
    return sam.eval()
