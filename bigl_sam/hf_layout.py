"""Hugging Face transformers' layout of SAM (`SamModel`): its parameter names and its `config.json`.

`to_official` renames a `SamModel` state dict to segment_anything's names (the layout every builder here
loads), `to_hf` the other way; `model_config_from_hf` reads which model a `config.json` describes (a SAM
ViT, or a student `hf.to_transformers` saved). Needs neither torch's model code nor transformers: names and
numbers only.
"""

import re
from dataclasses import replace
from typing import Dict, List, Tuple

from .errors import CheckpointError
from .modeling.config import PROMPT_EMBED_DIM, SAM_VIT_CONFIGS, ModelConfig, SamVitConfig, config_from_dict, is_student

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
    """A `SamModel` state dict under segment_anything's names (a student's encoder, under STUDENT_PREFIX, as
    `image_encoder.*`); keys of neither layout pass unchanged (the loader then names them as unexpected)."""
    student = {"image_encoder." + k[len(STUDENT_PREFIX):]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(STUDENT_PREFIX)}
    tied = state.pop(TIED_KEY, None)
    if SHARED_KEY not in state and tied is not None:
        state[SHARED_KEY] = tied
    elif tied is not None and not _same(tied, state[SHARED_KEY]):
        raise CheckpointError(f"{source}: {TIED_KEY} and {SHARED_KEY} differ; transformers ties them")
    return {**{_rename(key, _TO_OFFICIAL): value for key, value in state.items()}, **student}


def to_hf(state: Dict[str, object]) -> Dict[str, object]:
    """A segment_anything state dict under `SamModel`'s names (the tied embedding under both of its names)."""
    renamed = {_rename(key, _TO_HF): value for key, value in state.items()}
    if SHARED_KEY in renamed:
        renamed[TIED_KEY] = renamed[SHARED_KEY]
    return renamed


def _same(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


# config.json's vision_config fields, with the SamVitConfig field each one fixes (None: read as mlp_ratio).
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
# A SAM ViT of a shape no registry key names (any width, depth, input size) is called this.
UNREGISTERED_VIT = "vit_custom"
# config.json of a student saved by `hf.to_transformers`: its own config (keep ratio included) under this key,
# its encoder's weights under STUDENT_PREFIX (segment_anything's names after it).
STUDENT_CONFIG_KEY = "bigl_sam_config"
STUDENT_PREFIX = "vision_encoder.encoder."


def hf_vision_config(vit: SamVitConfig) -> dict:
    """The `vision_config` of a `SamConfig` for `vit` (what `vit_config_from_vision` reads back as `vit`)."""
    values = {hf: getattr(vit, ours) for hf, ours in _VISION_FIELDS.items() if ours is not None}
    values["global_attn_indexes"] = list(vit.global_attn_indexes)
    values["mlp_dim"] = int(vit.embed_dim * vit.mlp_ratio)
    return {**values, **_SAM_VISION}


def model_config_from_hf(config, source) -> ModelConfig:
    """The model a transformers `config.json` (parsed) describes: the student `hf.to_transformers` saved (its
    config travels under STUDENT_CONFIG_KEY), else the SAM ViT of its vision_config. Another model type (SAM 2's
    Hiera...), a prompt encoder or mask decoder of other sizes than SAM's, or a malformed vision_config is one
    `CheckpointError` naming the field."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: holds a JSON {_json_type(config)}, expected an object (a SamConfig)")
    model_type = config.get("model_type")
    if model_type != "sam":
        raise CheckpointError(f"{source}: model_type {model_type!r} is not SAM's ViT ('sam'); only SAM ViTs load")
    _check_prompt_and_decoder(config, source)
    vit = vit_config_from_vision(config.get("vision_config") or {}, source)
    if STUDENT_CONFIG_KEY not in config:
        return vit
    try:
        student = config_from_dict(config[STUDENT_CONFIG_KEY])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {STUDENT_CONFIG_KEY} is not a bigl-sam student config ({err})") from None
    if not is_student(student) or replace(student.p_path, name=vit.name) != vit:
        raise CheckpointError(f"{source}: {STUDENT_CONFIG_KEY} does not match its vision_config")
    return student


def vit_config_from_vision(vision, source) -> SamVitConfig:
    """The SAM ViT a `vision_config` (a dict; missing fields take transformers' defaults, ViT-B's) describes:
    any width, depth and input size; the registry's config where one has that shape. A field of the wrong
    type or value, or one every SAM ViT shares set otherwise (no relative positions...), is one
    `CheckpointError` naming it."""
    if not isinstance(vision, dict):
        raise CheckpointError(f"{source}: vision_config holds a JSON {_json_type(vision)}, expected an object")
    found = {**hf_vision_config(SAM_VIT_CONFIGS["vit_b"]), "mlp_dim": None, **vision}
    if found["mlp_dim"] is None:  # transformers' default: hidden_size * mlp_ratio
        found["mlp_dim"] = _integer(found, "hidden_size", source) * found.get("mlp_ratio", 4.0)
    sizes = {name: _integer(found, name, source) for name in _VISION_FIELDS if name != "global_attn_indexes"}
    for name, value in sizes.items():
        if value < (0 if name == "window_size" else 1):
            raise CheckpointError(f"{source}: vision_config.{name} is {value}, expected a positive integer")
    indexes = found["global_attn_indexes"]
    if not isinstance(indexes, list) or not all(_is_int(i) and i >= 0 for i in indexes):
        raise CheckpointError(f"{source}: vision_config.global_attn_indexes is {indexes!r}, expected a list of "
                              f"layer numbers")
    wrong = [f"{k} {found[k]!r} (every SAM ViT: {v!r})" for k, v in _SAM_VISION.items() if found.get(k, v) != v]
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        wrong.append(f"hidden_size {sizes['hidden_size']} not a multiple of num_attention_heads")
    if sizes["image_size"] % sizes["patch_size"]:
        wrong.append(f"image_size {sizes['image_size']} not a multiple of patch_size {sizes['patch_size']}")
    if wrong:
        raise CheckpointError(f"{source}: not a SAM ViT: {', '.join(wrong)}")
    vit = SamVitConfig(
        UNREGISTERED_VIT, embed_dim=sizes["hidden_size"], depth=sizes["num_hidden_layers"],
        num_heads=sizes["num_attention_heads"], global_attn_indexes=tuple(indexes),
        mlp_ratio=sizes["mlp_dim"] / sizes["hidden_size"], window_size=sizes["window_size"],
        img_size=sizes["image_size"], patch_size=sizes["patch_size"], out_chans=sizes["output_channels"],
    )
    registered = (name for name, known in SAM_VIT_CONFIGS.items() if replace(vit, name=name) == known)
    return replace(vit, name=next(registered, UNREGISTERED_VIT))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(found: dict, name: str, source) -> int:
    """vision_config's `name` as an int (a whole float such as transformers' computed mlp_dim counts)."""
    value = found[name]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not _is_int(value):
        raise CheckpointError(f"{source}: vision_config.{name} is {value!r} (a JSON {_json_type(value)}), "
                              f"expected an integer")
    return value


def _json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_prompt_and_decoder(config: dict, source) -> None:
    for part, expected in _SAM_PROMPT_DECODER.items():
        found = config.get(part) or {}
        if not isinstance(found, dict):
            raise CheckpointError(f"{source}: {part} holds a JSON {_json_type(found)}, expected an object")
        wrong = [f"{k} {found[k]} (SAM: {v})" for k, v in expected.items() if k in found and found[k] != v]
        if wrong:
            raise CheckpointError(f"{source}: {part} is not SAM's: {', '.join(wrong)}")


def hf_weight_files(index: dict, source) -> List[str]:
    """The shard file names of a `model.safetensors.index.json`, in first-seen order."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{source}: has no weight_map; not a transformers shard index")
    return list(dict.fromkeys(weight_map.values()))
