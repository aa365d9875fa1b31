from .config import (
    BIGL_CONFIGS,
    MODEL_CONFIGS,
    SAM_VIT_CONFIGS,
    TEST_MODELS,
    BigLittleConfig,
    SamVitConfig,
    get_config,
)
from .encoder import BigLittleImageEncoder, routing_map

__all__ = [
    "BIGL_CONFIGS",
    "MODEL_CONFIGS",
    "SAM_VIT_CONFIGS",
    "TEST_MODELS",
    "BigLittleConfig",
    "BigLittleImageEncoder",
    "SamVitConfig",
    "get_config",
    "routing_map",
]
