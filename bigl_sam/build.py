"""Builders: a registry key (`model_type`) -> a `segment_anything.modeling.Sam`, like SAM's own
`sam_model_registry`."""

from dataclasses import replace
from functools import partial
from typing import Callable, Dict, Optional

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .arguments import renamed_keywords
from .checkpoint import ModelWeights, PathLike, WeightsSource, as_weights, check_config, load_state_dict_into
from .errors import CheckpointError
from .images import PIXEL_MEAN, PIXEL_STD
from .modeling import BIGL_CONFIGS, BigLittleConfig, BigLittleImageEncoder, SamVitConfig, get_config, is_student
from .modeling.config import MODEL_CONFIGS, ModelConfig, sam_vit_config, students_of


def build_model(config: ModelConfig) -> Sam:
    """A randomly initialised SAM for `config`, in eval mode, with `model.config` set."""
    vit = sam_vit_config(config)
    if is_student(config):
        image_encoder = BigLittleImageEncoder(config)
    else:
        image_encoder = _sam_vit_encoder(config)
    grid = vit.img_size // vit.patch_size
    model = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=vit.out_chans,
            image_embedding_size=(grid, grid),
            input_image_size=(vit.img_size, vit.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=vit.out_chans, mlp_dim=2048, num_heads=8),
            transformer_dim=vit.out_chans,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    model.config = config
    return model.eval()


def _sam_vit_encoder(config: SamVitConfig) -> ImageEncoderViT:
    """SAM's own encoder, as shipped (its attention materialises the full attention matrix)."""
    return ImageEncoderViT(
        depth=config.depth,
        embed_dim=config.embed_dim,
        img_size=config.img_size,
        mlp_ratio=config.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.num_heads,
        patch_size=config.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=config.global_attn_indexes,
        window_size=config.window_size,
        out_chans=config.out_chans,
    )


@renamed_keywords(name="model_type", checkpoint="weights")
def build_sam(model_type: str, weights: Optional[WeightsSource] = None) -> Sam:
    """`sam_model_registry[model_type](checkpoint)`: SAM keys load SAM files (official, transformers, or
    `save_checkpoint`'s), bigl keys student files; `weights` a checkpoint's path, or one read already."""
    model = build_model(get_config(model_type))
    if weights is None:
        return model
    weights = as_weights(weights)
    if is_student(model) and not is_student(weights):
        raise CheckpointError(
            f"{weights.source}: is a SAM checkpoint, not a {model_type} student; start a student from it "
            f"with bigl_sam.build_student_from_sam({model_type!r}, encoder_weights=..., decoder_weights=...)"
        )
    if weights.config is not None:
        check_config(weights.config, model.config, weights.source)
    if is_student(weights):
        model.image_encoder.keep_ratio = weights.config.keep_ratio  # the ratio the file was saved with
    load_state_dict_into(model, weights.state, weights.source)
    return model


@renamed_keywords(checkpoint="weights")
def load_sam(weights: WeightsSource) -> Sam:
    """Rebuilds whatever model `weights` (a checkpoint's path, or one read already) holds: a bigl-sam student
    (its config travels with it), a SAM ViT-B/L/H (official file: its size is read off the weights;
    transformers folder: off its config.json)."""
    weights = as_weights(weights)
    model = build_model(weights.architecture())
    load_state_dict_into(model, weights.state, weights.source)
    return model


@renamed_keywords(name="model_type", encoder_checkpoint="encoder_weights", decoder_checkpoint="decoder_weights")
def build_student_from_sam(
    model_type: str, encoder_weights: Optional[WeightsSource], decoder_weights: Optional[WeightsSource] = None
) -> Sam:
    """A fresh student: P-path, patch/position embedding and neck from `encoder_weights`, a SAM of the
    student's `sam_model_type`; prompt encoder and mask decoder from `decoder_weights` (usually the SAM of
    its `decoder_model_type`; default: the encoder's). Router and E-path start fresh, the E-path with a
    zero residual scale. Either is any SAM checkpoint `load_sam` reads (its path), or one read already.
    """
    config = get_config(model_type)
    if not is_student(config):
        raise CheckpointError(f"{model_type} is not a big.LITTLE student; known students: {', '.join(BIGL_CONFIGS)}")
    encoder = _sam_weights(encoder_weights) if encoder_weights is not None else None
    if encoder is not None:
        _check_p_path_size(encoder, config)
    same = decoder_weights is None or decoder_weights == encoder_weights  # a ModelWeights: the same object
    decoder = encoder if same else _sam_weights(decoder_weights)
    model = build_model(config)
    if encoder is not None:
        part = part_of(encoder, "image_encoder")
        load_state_dict_into(model.image_encoder, part, encoder.source, fresh=(".router.", ".little."))
    if decoder is not None:
        for module in ("prompt_encoder", "mask_decoder"):
            load_state_dict_into(getattr(model, module), part_of(decoder, module), decoder.source)
    return model


def _sam_weights(source: WeightsSource) -> ModelWeights:
    weights = as_weights(source)
    if is_student(weights):
        raise CheckpointError(f"{weights.source}: is a bigl-sam student, expected a SAM checkpoint")
    return weights


def _check_p_path_size(weights: ModelWeights, config: BigLittleConfig) -> None:
    """The SAM file a P-path starts from must be of the P-path's size."""
    vit = weights.architecture()
    if vit.name == config.sam_model_type or replace(vit, name=config.p_path.name) == config.p_path:
        return
    students = students_of(vit)
    hint = f"use {' or '.join(students)}" if students else "no student starts from it"
    raise CheckpointError(
        f"{weights.source}: holds a SAM {vit.name}, but {config.name}'s P-path is a {config.sam_model_type} ({hint})"
    )


def part_of(weights: ModelWeights, module: str) -> Dict[str, torch.Tensor]:
    """The weights of one of a SAM's modules (image_encoder, prompt_encoder, mask_decoder), without its prefix."""
    prefix = module + "."
    part = {k[len(prefix):]: v for k, v in weights.state.items() if k.startswith(prefix)}
    if not part:
        raise CheckpointError(f"{weights.source}: has no {prefix}* keys; not a SAM checkpoint")
    return part


def _registry_entry(model_type: str) -> Callable[..., Sam]:
    def builder(checkpoint: Optional[PathLike] = None) -> Sam:  # SAM's own signature: a file, or none
        return build_sam(model_type, checkpoint)

    builder.__name__ = f"build_{model_type}"
    return builder


sam_model_registry: Dict[str, Callable[..., Sam]] = {
    model_type: _registry_entry(model_type) for model_type in MODEL_CONFIGS
}
