"""A model built here as a Hugging Face `transformers.SamModel`, and a `SamModel` back (the `[hf]` extra).

    from transformers import SamImageProcessor, SamProcessor
    from bigl_sam import load_sam
    from bigl_sam.hf import BigLittleSamModel, to_transformers

    model = to_transformers(load_sam("bigl_b_t.pth"))   # a BigLittleSamModel, a transformers.SamModel
    model.vision_encoder.keep_ratio = 0.25               # the dial
    processor = SamProcessor(image_processor=SamImageProcessor())
    inputs = processor(images=image, input_points=[[[450, 600]]], return_tensors="pt")
    outputs = model(**inputs)                            # pred_masks, iou_scores as from SAM
    model.save_pretrained("bigl_b_t-hf")                 # the student's config travels in config.json
    model = BigLittleSamModel.from_pretrained("bigl_b_t-hf")  # the student again (also: load_sam, --checkpoint)

A student's `SamModel` runs its big.LITTLE encoder behind transformers' vision-encoder interface
(`BigLittleVisionEncoder`), so `forward`, `get_image_embeddings`, `SamProcessor` and
`pipeline("mask-generation", model=model, image_processor=SamImageProcessor())` work unchanged; its prompt
encoder and mask decoder are transformers' own, holding the student's weights. SamProcessor pads the
normalised image with exact zeros at the bottom and right, which is where the encoder reads the image's
extent off. A SAM ViT (`load_sam` of an official file) becomes a plain `SamModel`: `save_pretrained` then
writes the folder transformers users load. `transformers.SamModel.from_pretrained` of a student's folder
would build SAM's encoder and leave it random: load it as `BigLittleSamModel`.
"""

from dataclasses import replace
from typing import Optional

from segment_anything.modeling import Sam
from transformers import SamConfig, SamModel, SamVisionConfig
from transformers import initialization as init
from transformers.models.sam.modeling_sam import SamPreTrainedModel, SamVisionEncoderOutput

from .build import build_model, build_student_from_sam, load_sam
from .checkpoint import ModelWeights, load_state_dict_into
from .errors import BiglSamError
from .hf_layout import (
    HF_VISION_PREFIX, STUDENT_CONFIG_KEY, hf_vision_config, model_config_from_hf, to_hf, to_official,
    vit_config_from_vision,
)
from .modeling import BIGL_CONFIGS, BigLittleConfig, BigLittleImageEncoder, SamVitConfig, is_student
from .modeling.attention import Attention
from .modeling.blocks import LittleBlock
from .modeling.config import config_from_dict, config_to_dict, sam_vit_config, students_of
from .pretrained import UNTRAINED_ROUTER_KEEP_RATIO

SOURCE = "transformers.SamModel"  # how messages name an in-memory SamModel
UNREGISTERED_STUDENT = "bigl_custom"  # the student `student_config_for` makes for a SAM ViT no student fits
HEAD_WIDTH = 64  # channels per head of the E-path `student_config_for` makes (bigl_b_t's)


def student_config_for(vit: SamVitConfig) -> BigLittleConfig:
    """A student whose P-path has `vit`'s shape: the registered one, else bigl_b_t's proportions (an E-path a
    quarter as wide as the P-path, heads of HEAD_WIDTH channels where it is that wide)."""
    registered = students_of(vit)
    if registered:
        return replace(BIGL_CONFIGS[registered[0]], p_path=vit)
    little_dim = max(1, vit.embed_dim // 4)
    little_heads = max(1, little_dim // HEAD_WIDTH)
    while little_dim % little_heads:
        little_heads -= 1
    return BigLittleConfig(UNREGISTERED_STUDENT, sam_model_type=vit.name, little_dim=little_dim,
                           little_heads=little_heads, decoder_model_type=vit.name, p_path=vit)


class BigLittleVisionEncoder(SamPreTrainedModel):
    """transformers' `SamVisionEncoder` interface around a `BigLittleImageEncoder`: pixel_values
    B x 3 x S x S (SamProcessor's) -> `SamVisionEncoderOutput`, last_hidden_state B x 256 x S/16 x S/16;
    with `output_hidden_states`, the tokens before each layer and after the last (B x H x W x C each); with
    `output_attentions`, each layer's `BigLittleBlock.attention_map` (SAM's layout; at keep < 1 the rows of
    the tokens the P-path skipped are zero). `gradient_checkpointing_enable()` on the `SamModel` reaches it.
    """

    config: SamVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config: SamVisionConfig, encoder: Optional[BigLittleImageEncoder] = None) -> None:
        """`encoder`: the student encoder to run, shared as it is; default a fresh one of the SAM ViT shape
        `config` describes (`student_config_for`), initialised the way transformers initialises models."""
        super().__init__(config)
        fresh = encoder is None
        if fresh:
            encoder = BigLittleImageEncoder(student_config_for(vit_config_from_vision(config.to_dict(), SOURCE)))
        self.encoder = encoder
        if fresh:
            self.post_init()

    @property
    def keep_ratio(self) -> float:
        """Share of each image's tokens the P-path runs on, in (0, 1]."""
        return self.encoder.keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, ratio: float) -> None:
        self.encoder.keep_ratio = ratio

    def get_input_embeddings(self):
        return self.encoder.patch_embed

    def _init_weights(self, module) -> None:
        """transformers' initialisation (also of parameters built on the meta device, as `from_pretrained`
        builds them), with SAM's zeros for position tables and the E-path's zero start."""
        super()._init_weights(module)
        if isinstance(module, Attention):
            init.zeros_(module.rel_pos_h)
            init.zeros_(module.rel_pos_w)
        elif isinstance(module, BigLittleImageEncoder):
            init.zeros_(module.pos_embed)
        elif isinstance(module, LittleBlock):
            init.zeros_(module.scale)

    def forward(
        self, pixel_values=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs
    ):
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        attentions_wanted = self.config.output_attentions if output_attentions is None else output_attentions
        hidden_wanted = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        tokens = [] if attentions_wanted or hidden_wanted else None
        embeddings, routing = self.encoder.forward_with_routing(pixel_values, hidden_states=tokens)
        attentions = None
        if attentions_wanted:
            attentions = tuple(block.attention_map(x, index)
                               for block, x, index in zip(self.encoder.blocks, tokens, routing))
        output = SamVisionEncoderOutput(last_hidden_state=embeddings, hidden_states=tuple(tokens) if hidden_wanted
                                        else None, attentions=attentions)
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()


class BigLittleSamModel(SamModel):
    """A `SamModel` whose vision encoder is a big.LITTLE student (`BigLittleVisionEncoder`): what
    `to_transformers` gives for a student, and what loads its `save_pretrained` folder the transformers way
    (`BigLittleSamModel.from_pretrained(folder)`). The student's config, keep ratio included, travels in
    config.json; a config without one gets a fresh student of its vision config's shape."""

    def __init__(self, config: SamConfig, encoder: Optional[BigLittleImageEncoder] = None) -> None:
        """`encoder`: the student encoder to run, shared as it is; default a fresh one of the config's student."""
        super().__init__(config)
        student = getattr(config, STUDENT_CONFIG_KEY, None)
        built = encoder is None and student is not None
        if built:
            encoder = BigLittleImageEncoder(config_from_dict(student))
        checkpointing = self.is_activation_checkpointing  # config.gradient_checkpointing, consumed by post_init
        self.vision_encoder = BigLittleVisionEncoder(config.vision_config, encoder)
        if built:
            self.vision_encoder.post_init()
        if checkpointing:
            self.activation_checkpointing_enable()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, with the student's config (and the keep ratio it has now)."""
        encoder = self.vision_encoder.encoder
        setattr(self.config, STUDENT_CONFIG_KEY, config_to_dict(replace(encoder.config, keep_ratio=encoder.keep_ratio)))
        return super().save_pretrained(save_directory, *args, **kwargs)


def to_transformers(model: Sam) -> SamModel:
    """`model` (a student or a SAM ViT built here) as a `SamModel` in eval mode: a student as a
    `BigLittleSamModel` that shares the student's image encoder (the same module, so the same dial); its
    other weights are copied. Anything not built here is one `BiglSamError`."""
    config = _built_here(model)
    student = is_student(config)
    vit = sam_vit_config(config)
    state = model.state_dict()
    if student:
        encoder = model.image_encoder
        settings = {STUDENT_CONFIG_KEY: config_to_dict(replace(config, keep_ratio=encoder.keep_ratio))}
        hf = BigLittleSamModel(SamConfig(vision_config=hf_vision_config(vit), **settings), encoder)
        state = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
    else:
        hf = SamModel(SamConfig(vision_config=hf_vision_config(vit)))  # prompt encoder and decoder: SAM's sizes
    fresh = (HF_VISION_PREFIX,) if student else ()  # a student's encoder is shared, not loaded
    load_state_dict_into(hf, to_hf(state), f"{config.name} model", fresh=fresh)
    return hf.eval()


def _built_here(model) -> object:
    """The config of a model built here, else a `BiglSamError` saying what `model` is and what to do."""
    config = getattr(model, "config", None)
    if isinstance(model, Sam) and isinstance(config, (SamVitConfig, BigLittleConfig)):
        return config
    if isinstance(model, SamModel):
        what = "a transformers SamModel already (from_transformers(model) gives the model built here)"
    elif isinstance(model, Sam):
        what = "a segment_anything Sam, not built by bigl-sam (rebuild it with bigl_sam.load_sam(checkpoint))"
    else:
        what = f"a {type(model).__name__}"
    raise BiglSamError(f"to_transformers: takes a model built by bigl-sam (load_sam, build_sam); got {what}")


def from_transformers(model: SamModel, student: Optional[str] = None) -> Sam:
    """A `SamModel` as a model built here (segment_anything's `Sam`, with `model.config`), in eval mode.

    A student's `SamModel` (`BigLittleSamModel`) gives the student back (weights copied). A plain SamModel of
    any SAM ViT shape (with SAM's prompt encoder and mask decoder) gives the SAM ViT it is, or with `student`
    (a registry name such as "bigl_b_t") a student built from it as `build_student_from_sam` builds one:
    exactly that SAM at keep ratio 1.0, which it starts at.
    """
    hf_state = model.state_dict()
    if isinstance(model.vision_encoder, BigLittleVisionEncoder):
        encoder = model.vision_encoder.encoder
        sam = build_model(encoder.config)
        load_state_dict_into(sam, to_official(hf_state, SOURCE), SOURCE)
        sam.image_encoder.keep_ratio = encoder.keep_ratio
        return sam
    weights = ModelWeights(model_config_from_hf(model.config.to_dict(), SOURCE), to_official(hf_state, SOURCE), SOURCE)
    if student is None:
        return load_sam(weights).eval()
    sam = build_student_from_sam(student, weights)
    sam.image_encoder.keep_ratio = UNTRAINED_ROUTER_KEEP_RATIO
    return sam.eval()
