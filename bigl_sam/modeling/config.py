"""Architecture configs as plain dataclasses, and the registry that names them.

`SamVitConfig` describes one of SAM's ViT image encoders (the teachers, and where a student's P-path
starts from). `BigLittleConfig` describes a big.LITTLE student: its P-path has exactly the shape of the
SAM ViT named by `sam_model_type`, its E-path is a narrow ViT of width `little_dim`.
"""

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import BiglSamError, CheckpointError, UnknownModelError, check_keep_ratio
from ..images import IMG_SIZE, PATCH_SIZE

WINDOW_SIZE = 14
PROMPT_EMBED_DIM = 256


@dataclass(frozen=True)
class SamVitConfig:
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    mlp_ratio: float = 4.0
    window_size: int = WINDOW_SIZE
    img_size: int = IMG_SIZE
    patch_size: int = PATCH_SIZE
    out_chans: int = PROMPT_EMBED_DIM

    @property
    def kind(self) -> str:
        return "sam_vit"


LITTLE_ATTN = ("window", "match")


@dataclass(frozen=True)
class BigLittleConfig:
    name: str
    sam_model_type: str  # the SAM ViT whose shape (and, built from SAM, weights) the P-path takes, e.g. "vit_b"
    little_dim: int
    little_heads: int
    keep_ratio: float = 0.25
    little_mlp_ratio: float = 4.0
    # The E-path's attention: "window" (windows of `little_window_size` in every layer: every token gets a
    # cheap local update, while global context reaches every token as a key/value of the P-path's global
    # layers), or "match" (the P-path's windows, and global where the P-path is global, as in the paper).
    little_attn: str = "window"
    # 8 tiles the 64 x 64 grid exactly (14 leaves 16% of every window padding) at a quarter of the
    # attention product per token.
    little_window_size: int = 8
    decoder_model_type: str = "vit_h"  # the SAM whose prompt encoder and mask decoder it uses by default
    p_path: SamVitConfig = field(default=None)  # type: ignore[assignment]  # filled from sam_model_type

    def __post_init__(self) -> None:
        if self.p_path is None:
            object.__setattr__(self, "p_path", SAM_VIT_CONFIGS[self.sam_model_type])
        elif isinstance(self.p_path, dict):
            p_path = dict(self.p_path)
            p_path["global_attn_indexes"] = tuple(p_path["global_attn_indexes"])
            object.__setattr__(self, "p_path", SamVitConfig(**p_path))
        check_keep_ratio(self.keep_ratio)
        if self.little_attn not in LITTLE_ATTN:
            raise ValueError(f"little_attn must be one of {', '.join(LITTLE_ATTN)}, got {self.little_attn!r}")

    @property
    def kind(self) -> str:
        return "bigl"

    def little_window(self, layer: int) -> int:
        """The E-path's window side in `layer` (0: global attention)."""
        if self.little_attn == "window":
            return self.little_window_size
        return 0 if layer in self.p_path.global_attn_indexes else self.p_path.window_size


ModelConfig = Union[SamVitConfig, BigLittleConfig]

SAM_VIT_CONFIGS: Dict[str, SamVitConfig] = {
    "vit_b": SamVitConfig("vit_b", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamVitConfig("vit_l", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamVitConfig("vit_h", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # Random tiny architectures for tests and smoke runs; same input/output shapes as the real ones.
    "vit_test": SamVitConfig("vit_test", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,)),
    # A small SAM for CPU-scale training and the quality study (docs/training.md says why these sizes):
    # 512-pixel input (32 x 32 tokens), 8 x 8 windows that tile the grid, SAM's prompt encoder and decoder.
    "vit_mini": SamVitConfig("vit_mini", embed_dim=256, depth=6, num_heads=4, global_attn_indexes=(2, 5),
                             window_size=8, img_size=512),
    # A narrower dense ViT of about bigl_mini's GMACs at keep 0.25 (3.4 against 3.7 per 512 x 512 image, `bigl-sam
    # bench`): the study's small dense student (MobileSAM's decoupled distillation, from random weights).
    "vit_micro": SamVitConfig("vit_micro", embed_dim=160, depth=6, num_heads=5, global_attn_indexes=(2, 5),
                              window_size=8, img_size=512),
}
SAM_VIT_CONFIGS["default"] = SAM_VIT_CONFIGS["vit_h"]

# The big.LITTLE students, by registry key.
BIGL_CONFIGS: Dict[str, BigLittleConfig] = {
    "bigl_b_t": BigLittleConfig("bigl_b_t", sam_model_type="vit_b", little_dim=192, little_heads=3),
    "bigl_l_s": BigLittleConfig("bigl_l_s", sam_model_type="vit_l", little_dim=384, little_heads=6),
    # The paper's pairing for ViT-H: a ViT-B-wide E-path.
    "bigl_h_b": BigLittleConfig("bigl_h_b", sam_model_type="vit_h", little_dim=768, little_heads=12),
    # The lean H student: a narrow E-path (`bigl-sam bench` counts the MACs of each).
    "bigl_h_s": BigLittleConfig("bigl_h_s", sam_model_type="vit_h", little_dim=384, little_heads=6),
    "bigl_mini": BigLittleConfig(
        "bigl_mini", sam_model_type="vit_mini", little_dim=64, little_heads=2, decoder_model_type="vit_mini"
    ),
    "bigl_test": BigLittleConfig(
        "bigl_test", sam_model_type="vit_test", little_dim=32, little_heads=1, decoder_model_type="vit_test"
    ),
}

MODEL_CONFIGS: Dict[str, ModelConfig] = {**SAM_VIT_CONFIGS, **BIGL_CONFIGS}


def is_student(config_or_model: Any) -> bool:
    """True for a big.LITTLE student: a `BigLittleConfig`, or anything built from one that carries it as
    `.config` (a model built here, its `BigLittleImageEncoder`). A SAM ViT, None, or a model from elsewhere:
    False."""
    return isinstance(getattr(config_or_model, "config", config_or_model), BigLittleConfig)


def sam_vit_config(config: "ModelConfig") -> SamVitConfig:
    """The SAM ViT whose shape a model's encoder has: a student's P-path, or the SAM ViT itself."""
    return config.p_path if is_student(config) else config


def students_of(vit: SamVitConfig) -> List[str]:
    """The registered students whose P-path has the shape of `vit` (whatever its name), in registry order."""
    return [name for name, config in BIGL_CONFIGS.items() if replace(vit, name=config.p_path.name) == config.p_path]


def keep_ratio_of(model: Any) -> Optional[float]:
    """The share of tokens a student's P-path sees (its image encoder's `keep_ratio`); None for SAM's own
    encoders. `model`: a `Sam` or its image encoder."""
    encoder = getattr(model, "image_encoder", model)
    return encoder.keep_ratio if is_student(encoder) else None


def check_keep_ratio_applies(model: Any, keep_ratio: Optional[float], model_type: str) -> None:
    """A `--keep-ratio` given for SAM's own encoder (`model`, of registry key `model_type`) is a
    `BiglSamError`: only big.LITTLE students route tokens."""
    if keep_ratio is not None and not is_student(getattr(model, "image_encoder", model)):
        raise BiglSamError(f"--keep-ratio: {model_type} is SAM's own encoder, only big.LITTLE students route tokens")


def get_config(model_type: str) -> ModelConfig:
    if model_type not in MODEL_CONFIGS:
        raise UnknownModelError(f"unknown model {model_type!r}; known: {', '.join(sorted(MODEL_CONFIGS))}")
    return MODEL_CONFIGS[model_type]


def config_to_dict(config: ModelConfig) -> dict:
    """Plain types only (str, int, float, list, dict), so it loads with `weights_only=True`."""
    data = asdict(config)
    data["kind"] = config.kind
    return _lists_for_tuples(data)


def config_from_dict(data: dict) -> ModelConfig:
    data = dict(data)
    kind = data.pop("kind")
    if kind == "sam_vit":
        data["global_attn_indexes"] = tuple(data["global_attn_indexes"])
        return SamVitConfig(**data)
    if kind == "bigl":
        return BigLittleConfig(**data)
    raise ValueError(f"unknown config kind {kind!r}")


def _lists_for_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_for_tuples(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists_for_tuples(v) for v in value]
    return value


def infer_sam_vit_name(state: dict, source) -> str:
    """Which official SAM ViT a flat state dict holds, read off its embedding width and depth."""
    pos_embed = state.get("image_encoder.pos_embed")
    if pos_embed is None:
        raise CheckpointError(f"{source}: has no image_encoder.pos_embed; not a SAM checkpoint")
    width = pos_embed.shape[-1]
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name in ("vit_b", "vit_l", "vit_h", "vit_mini", "vit_micro", "vit_test"):
        config = SAM_VIT_CONFIGS[name]
        if (config.embed_dim, config.depth) == (width, depth):
            return name
    raise CheckpointError(f"{source}: a ViT of width {width} and depth {depth} matches no known SAM model")
