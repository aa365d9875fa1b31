"""One demo click timed as a user meets it: the demo starts (with `compiled`, it compiles SAM's mask decoder
as `bigl-sam demo` does), a photo is encoded, then the first click is timed on its own and the later
clicks as a median. A first click that recompiles shows as seconds here.

A click is prompt encoder + mask decoder (multimask) + upsampling of the masks to the photo, on the CPU;
every model shares this decoder, so the tiny `vit_test` encoder stands in for the image encoder.
"""

import statistics
from typing import Dict, Tuple

from ..build import build_model
from ..errors import first_line
from ..inference import compile_decoder, decode_click, encode_image
from ..modeling import get_config
from .inputs import synthetic_photo

CLICK_PHOTO_SIZE = (640, 480)  # width, height
CLICK_POINT = (320.0, 240.0)  # x, y in the photo


def bench_clicks(later_clicks: int, compiled: bool) -> Dict[str, object]:
    """ms of the first click after start-up and median ms of `later_clicks` more, eager and (with
    `compiled`) with the demo's compiled decoder, plus the seconds its start-up compile took."""
    result: Dict[str, object] = {}
    result["eager_first_ms"], result["eager_ms"] = _clicks(_fresh_model(), later_clicks)
    if compiled:
        model = _fresh_model()
        try:
            result["compile_s"] = compile_decoder(model)
        except Exception as err:  # the demo then runs eagerly; so is said here
            result["compile_error"] = first_line(err, with_type=True)
            return result
        result["compiled_first_ms"], result["compiled_ms"] = _clicks(model, later_clicks)
    return result


def _fresh_model():
    return build_model(get_config("vit_test"))


def _clicks(model, later_clicks: int) -> Tuple[float, float]:
    encoding = encode_image(model, synthetic_photo(*CLICK_PHOTO_SIZE))
    first = decode_click(model, encoding, [CLICK_POINT], [1]).seconds
    later = [decode_click(model, encoding, [CLICK_POINT], [1]).seconds for _ in range(later_clicks)]
    return first * 1e3, statistics.median(later) * 1e3
