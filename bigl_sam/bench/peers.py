"""Image encoders of other efficient SAMs, timed beside SAM's and big.LITTLE's in the same run.

Built from their PyPI packages, the optional `peers` extra (`pip install -e ".[peers]"`), with random
weights (latency and MACs do not depend on the values); nothing is downloaded. Their prompt encoder and
mask decoder are SAM's, so, as for every row of `bigl-sam bench`, only the image encoder is timed. This
dict is the one place that maps a `--models` name to a peer.
"""

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict

from ..errors import BiglSamError

if TYPE_CHECKING:  # annotations only: --help imports no torch
    from torch import nn

PEERS_INSTALL = 'pip install -e ".[peers]"'


@dataclass(frozen=True)
class Peer:
    name: str  # as `--models` takes it
    encoder: str  # what is timed, in words
    img_size: int  # side of the square input its image encoder takes (SAM-style resize and zero pad)
    build: Callable[[], "nn.Module"]  # its image encoder, random weights, eval mode


def _mobilesam() -> "nn.Module":
    # mobilesam-lite imports timm's deprecated module paths and registers its TinyViT variants in timm's
    # registry under names timm already has; neither concerns a bench user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Overwriting .* in registry")
        warnings.filterwarnings("ignore", message="Importing from timm", category=FutureWarning)
        from mobilesam_lite.mobile_sam.build_sam import build_sam_vit_t
    return build_sam_vit_t(checkpoint=None).image_encoder


def _efficientvit_sam(builder: str) -> Callable[[], "nn.Module"]:
    def build() -> "nn.Module":
        from efficientsam.models.efficientvit import sam

        return getattr(sam, builder)().image_encoder

    return build


PEERS: Dict[str, Peer] = {
    "mobilesam": Peer("mobilesam", "MobileSAM's TinyViT-5M (mobilesam-lite)", 1024, _mobilesam),
    "efficientvit_sam_l0": Peer(
        "efficientvit_sam_l0", "EfficientViT-SAM-L0 (efficientsam)", 512, _efficientvit_sam("efficientvit_sam_l0")
    ),
    "efficientvit_sam_xl1": Peer(
        "efficientvit_sam_xl1", "EfficientViT-SAM-XL1 (efficientsam)", 1024, _efficientvit_sam("efficientvit_sam_xl1")
    ),
}


def build_peer(name: str) -> "nn.Module":
    """The image encoder of peer `name`, eval mode; one error line if the `peers` extra is missing."""
    try:
        return PEERS[name].build().eval()
    except ImportError as err:
        raise BiglSamError(
            f"--models {name}: needs the optional peer packages ({err.name or err}): {PEERS_INSTALL}"
        ) from None
