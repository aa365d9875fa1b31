"""What the ONNX work needs installed, the `[onnx]` extra: checked before any of it starts, by the commands
that export (`bigl-sam export onnx`, `bigl-sam bench --backend onnxruntime`)."""

import importlib.util

from ..errors import BiglSamError

ONNX_EXTRA = ("onnx", "onnxruntime", "onnxscript", "yaml")  # the modules the [onnx] extra installs
ONNX_INSTALL = 'pip install -e ".[onnx]"'


def require_onnx_extra(what: str) -> None:
    """One error line naming what `what` needs if a package of the onnx extra is missing."""
    missing = [name for name in ONNX_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise BiglSamError(f"{what} needs the onnx extra (missing {', '.join(missing)}): {ONNX_INSTALL}")
