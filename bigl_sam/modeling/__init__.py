from .config import (
    BIGL_CONFIGS,
    MODEL_CONFIGS,
    SAM_VIT_CONFIGS,
    BigLittleConfig,
    SamVitConfig,
    get_config,
    check_keep_ratio_applies,
    is_student,
    keep_ratio_of,
)
from .encoder import BigLittleImageEncoder, routing_map

__all__ = [
    "BIGL_CONFIGS",
    "MODEL_CONFIGS",
    "SAM_VIT_CONFIGS",
    "BigLittleConfig",
    "BigLittleImageEncoder",
    "SamVitConfig",
    "get_config",
    "check_keep_ratio_applies",
    "is_student",
    "keep_ratio_of",
    "routing_map",
]
