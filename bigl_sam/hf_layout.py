"""Hugging Face transformers' layout of SAM (`SamModel`): its parameter names and its `config.json`.

`to_official` renames a `SamModel` state dict to segment_anything's names (the layout every builder here
loads), `to_hf` the other way; `vit_config_from_hf` reads which SAM ViT a `config.json` describes. Needs
neither torch's model code nor transformers: names and numbers only.
"""

import re
from typing import Dict, List, Tuple

from .errors import CheckpointError
from .modeling.config import PROMPT_EMBED_DIM, SAM_VIT_CONFIGS, SamVitConfig

# (official prefix, transformers prefix); "#" is a layer number. The first rule that matches a key wins.
_RENAMES = (
    ("image_encoder.blocks.#.norm1.", "vision_encoder.layers.#.layer_norm1."),
    ("image_encoder.blocks.#.norm2.", "vision_encoder.layers.#.layer_norm2."),
    ("image_encoder.blocks.#.", "vision_encoder.layers.#."),
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("image_encoder.", "vision_encoder."),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.#.", "prompt_encoder.point_embed.#."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("mask_decoder.transformer.layers.#.norm#.", "mask_decoder.transformer.layers.#.layer_norm#."),
    ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    # SAM's heads are 3-layer MLPs: transformers names the first and last layer, numbering the middle one 0.
    ("mask_decoder.output_hypernetworks_mlps.#.layers.0.", "mask_decoder.output_hypernetworks_mlps.#.proj_in."),
    ("mask_decoder.output_hypernetworks_mlps.#.layers.1.", "mask_decoder.output_hypernetworks_mlps.#.layers.0."),
    ("mask_decoder.output_hypernetworks_mlps.#.layers.2.", "mask_decoder.output_hypernetworks_mlps.#.proj_out."),
    ("mask_decoder.iou_prediction_head.layers.0.", "mask_decoder.iou_prediction_head.proj_in."),
    ("mask_decoder.iou_prediction_head.layers.1.", "mask_decoder.iou_prediction_head.layers.0."),
    ("mask_decoder.iou_prediction_head.layers.2.", "mask_decoder.iou_prediction_head.proj_out."),
)
# transformers ties the prompt encoder's copy of the positional embedding to the model-wide one.
TIED_KEY = "prompt_encoder.shared_embedding.positional_embedding"
SHARED_KEY = "shared_image_embedding.positional_embedding"
HF_VISION_PREFIX = "vision_encoder."


def _compile(source: str, target: str) -> Tuple[re.Pattern, str]:
    pattern = "^" + re.escape(source).replace(re.escape("#"), r"(\d+)")
    numbers = iter(range(1, source.count("#") + 1))
    return re.compile(pattern), re.sub("#", lambda _: f"\\{next(numbers)}", target)


_TO_HF = [_compile(official, hf) for official, hf in _RENAMES]
_TO_OFFICIAL = [_compile(hf, official) for official, hf in _RENAMES]


def _rename(key: str, rules: List[Tuple[re.Pattern, str]]) -> str:
    for pattern, template in rules:
        renamed, count = pattern.subn(template, key, count=1)
        if count:
            return renamed
    return key


def is_hf_layout(state: Dict[str, object]) -> bool:
    """True for a `SamModel` state dict (its image encoder is `vision_encoder.*`)."""
    return any(key.startswith(HF_VISION_PREFIX) for key in state)


def to_official(state: Dict[str, object], source) -> Dict[str, object]:
    """A `SamModel` state dict under segment_anything's names; keys of neither layout pass unchanged (the
    loader then names them as unexpected)."""
    state = dict(state)
    tied = state.pop(TIED_KEY, None)
    if SHARED_KEY not in state and tied is not None:
        state[SHARED_KEY] = tied
    elif tied is not None and not _same(tied, state[SHARED_KEY]):
        raise CheckpointError(f"{source}: {TIED_KEY} and {SHARED_KEY} differ; transformers ties them")
    return {_rename(key, _TO_OFFICIAL): value for key, value in state.items()}


def to_hf(state: Dict[str, object]) -> Dict[str, object]:
    """A segment_anything state dict under `SamModel`'s names (the tied embedding under both of its names)."""
    renamed = {_rename(key, _TO_HF): value for key, value in state.items()}
    if SHARED_KEY in renamed:
        renamed[TIED_KEY] = renamed[SHARED_KEY]
    return renamed


def _same(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


# config.json's vision_config fields, with the SamVitConfig field each one fixes (None: must be SAM's value).
_VISION_FIELDS = {
    "hidden_size": "embed_dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "global_attn_indexes": "global_attn_indexes",
    "mlp_dim": None,
    "window_size": "window_size",
    "image_size": "img_size",
    "patch_size": "patch_size",
    "output_channels": "out_chans",
}
# What every SAM ViT has besides: one head width, rel-pos attention, absolute position embedding, 3 channels.
_SAM_VISION = {"num_channels": 3, "use_rel_pos": True, "use_abs_pos": True, "qkv_bias": True, "hidden_act": "gelu"}
_SAM_PROMPT_DECODER = {
    "prompt_encoder_config": {"hidden_size": PROMPT_EMBED_DIM, "mask_input_channels": 16, "num_point_embeddings": 4},
    "mask_decoder_config": {"hidden_size": PROMPT_EMBED_DIM, "mlp_dim": 2048, "num_hidden_layers": 2,
                            "num_attention_heads": 8, "num_multimask_outputs": 3, "iou_head_depth": 3,
                            "iou_head_hidden_dim": 256},
}


def hf_vision_config(vit: SamVitConfig) -> dict:
    """The `vision_config` of a `SamConfig` for `vit` (what `vit_config_from_hf` reads back as `vit`)."""
    values = {hf: getattr(vit, ours) for hf, ours in _VISION_FIELDS.items() if ours is not None}
    values["global_attn_indexes"] = list(vit.global_attn_indexes)
    values["mlp_dim"] = int(vit.embed_dim * vit.mlp_ratio)
    return {**values, **_SAM_VISION}


def vit_config_from_hf(config: dict, source) -> SamVitConfig:
    """The SAM ViT a transformers `config.json` (as a dict) describes. Anything else (another model type such
    as SAM 2's Hiera, pruned widths such as SlimSAM's, another patch size...) is one `CheckpointError` naming
    the fields that differ from the nearest SAM ViT."""
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "sam":
        raise CheckpointError(f"{source}: model_type {model_type!r} is not SAM's ViT ('sam'); only SAM ViTs load")
    vision = config.get("vision_config") or {}
    if not isinstance(vision, dict):
        raise CheckpointError(f"{source}: vision_config is not a mapping")
    found = {**hf_vision_config(SAM_VIT_CONFIGS["vit_b"]), **vision}  # transformers' defaults are ViT-B's
    try:
        if found["mlp_dim"] is None:
            found["mlp_dim"] = int(found["hidden_size"] * found.get("mlp_ratio", 4.0))
        found["global_attn_indexes"] = list(found["global_attn_indexes"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: malformed vision_config ({err})") from None
    differences = {}
    for name, vit in SAM_VIT_CONFIGS.items():
        expected = hf_vision_config(vit)
        differences[name] = [f"{k} {found[k]} (SAM {name}: {v})" for k, v in expected.items() if found[k] != v]
        if not differences[name]:
            _check_prompt_and_decoder(config, source)
            return vit
    nearest = min(differences, key=lambda name: len(differences[name]))
    raise CheckpointError(
        f"{source}: not an architecture this version supports (SAM ViT-B/L/H); nearest is {nearest}, which differs "
        f"in {', '.join(differences[nearest])}"
    )


def _check_prompt_and_decoder(config: dict, source) -> None:
    for part, expected in _SAM_PROMPT_DECODER.items():
        found = config.get(part) or {}
        wrong = [f"{k} {found[k]} (SAM: {v})" for k, v in expected.items() if k in found and found[k] != v]
        if wrong:
            raise CheckpointError(f"{source}: {part} is not SAM's: {', '.join(wrong)}")


def hf_weight_files(index: dict, source) -> List[str]:
    """The shard file names of a `model.safetensors.index.json`, in first-seen order."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{source}: has no weight_map; not a transformers shard index")
    return list(dict.fromkeys(weight_map.values()))
