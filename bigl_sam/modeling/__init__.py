from .config import (
    BIGL_CONFIGS,
    MODEL_CONFIGS,
    SAM_VIT_CONFIGS,
    BigLittleConfig,
    SamVitConfig,
    get_config,
    is_student,
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
    "is_student",
    "routing_map",
]
