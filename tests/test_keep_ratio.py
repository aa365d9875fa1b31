"""keep_ratio comes from users of the Python API as whatever they typed: only a number in (0, 1] is one."""

import math

import numpy as np
import pytest
import torch

from bigl_sam import build_model
from bigl_sam.errors import BiglSamError, KeepRatioError, keep_ratio_list
from bigl_sam.modeling import get_config
from bigl_sam.modeling.config import check_keep_ratio


@pytest.mark.parametrize(
    "ratio, named",
    [("0.5", "str"), (True, "bool"), (False, "bool"), (np.bool_(True), "bool"), (None, "NoneType"), ([0.5], "list"), (torch.tensor(0.5), "Tensor")],
)
def test_non_numbers_are_refused_naming_the_type(ratio, named):
    with pytest.raises(KeepRatioError) as err:
        check_keep_ratio(ratio, "keep_ratio")
    message = str(err.value)
    assert message.startswith("keep_ratio must be in (0, 1]") and f"({named})" in message
    assert isinstance(err.value, BiglSamError) and "\n" not in message


@pytest.mark.parametrize("ratio", [math.nan, math.inf, -0.5, 0.0, 1.5])
def test_numbers_outside_the_range_are_refused(ratio):
    with pytest.raises(KeepRatioError, match=r"must be in \(0, 1\], got (nan|inf|-0.5|0.0|1.5) \(float\)"):
        check_keep_ratio(ratio)


@pytest.mark.parametrize("ratio", [1, 0.25, np.float32(0.5), np.float64(1.0)])
def test_numbers_in_range_come_back_as_float(ratio):
    checked = check_keep_ratio(ratio)
    assert type(checked) is float and checked == float(ratio)


@pytest.mark.parametrize("ratio", ["0.5", True])
def test_encoder_refuses_a_keep_ratio_of_the_wrong_type(ratio):
    """The Python API path: `sam.image_encoder.keep_ratio = True` used to run as keep ratio 1.0."""
    encoder = build_model(get_config("bigl_test")).image_encoder
    x = torch.zeros(1, 3, encoder.img_size, encoder.img_size)
    with pytest.raises(KeepRatioError, match="bool|str"):
        encoder(x, keep_ratio=ratio)
    encoder.keep_ratio = ratio
    with pytest.raises(KeepRatioError, match="bool|str"):
        encoder(x)


def test_a_keep_ratio_list_is_read_one_way_for_every_command():
    assert keep_ratio_list("0.25, 1.0,0.25") == [0.25, 1.0]
    assert keep_ratio_list("default,1.0", default=0.25) == [0.25, 1.0]
    with pytest.raises(BiglSamError, match=r"^--keep-ratio 'default' is not a number$"):
        keep_ratio_list("default")  # only where the command has a default
    with pytest.raises(BiglSamError, match=r"^--keep-ratio 'half' is not a number \(or 'default'\)$"):
        keep_ratio_list("0.5,half", default=0.25)
    with pytest.raises(KeepRatioError, match=r"^--keep-ratio must be in \(0, 1\], got 1\.5"):
        keep_ratio_list("0.25,1.5")
