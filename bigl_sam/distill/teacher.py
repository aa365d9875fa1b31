"""Where a run's targets come from.

- `CachedTeacher`: a teacher cache (`bigl-sam distill cache`), for a teacher bigger than the student
  (ViT-H): the teacher ran once per (image, augmentation), training reads its embeddings.
- `OnlineTeacher`: the frozen image encoder of a SAM-layout file, run on the fly on the very input the
  student gets (self-distillation: the student starts as that SAM and learns to run it cheaper).
Both give `image_ids` (the image of each item), `dataset(items, model)` and `targets(batch, images)`.
"""

from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from segment_anything.modeling import Sam

from ..build import load_sam
from ..checkpoint import WeightsSource, as_weights
from ..errors import BiglSamError, CheckpointError
from ..modeling.config import is_student, sam_vit_config
from .cache import TeacherCache, list_images
from .data import DistillDataset, ImageDataset


class CachedTeacher:
    def __init__(self, root: str) -> None:
        self.cache = TeacherCache(root)
        self.where = str(root)
        if len(self.cache) == 0:
            raise BiglSamError(f"{root}: the teacher cache holds no entries (every image was skipped?)")
        check_images_exist(self.cache)
        self.image_ids: List[str] = [entry.image_id for entry in self.cache.entries]
        self.img_size = self.cache.img_size
        self.embedding_shape: Tuple[int, ...] = tuple(self.cache.embedding(0).shape)

    def dataset(self, items: Sequence[int], model: Sam) -> DistillDataset:
        return DistillDataset(self.cache, items, model.pixel_mean, model.pixel_std)

    def to(self, device: torch.device) -> "CachedTeacher":
        return self

    def targets(self, batch: dict, images: torch.Tensor) -> torch.Tensor:
        """B x C x G x G float32 teacher embeddings of the batch (read from the cache)."""
        return batch["target"].to(images.device, non_blocking=True).float()


class OnlineTeacher:
    def __init__(self, teacher: WeightsSource, images_root: str) -> None:
        weights = as_weights(teacher)
        sam = load_sam_teacher(weights)
        self.where = weights.source
        self.config = sam.config
        self.encoder = sam.image_encoder.requires_grad_(False).eval()
        self.images_root = Path(images_root)
        self.image_ids = list_images(self.images_root)
        self.img_size = self.config.img_size
        grid = self.config.img_size // self.config.patch_size
        self.embedding_shape = (self.config.out_chans, grid, grid)

    def dataset(self, items: Sequence[int], model: Sam) -> ImageDataset:
        ids = [self.image_ids[i] for i in items]
        return ImageDataset(self.images_root, ids, model.pixel_mean, model.pixel_std, self.img_size)

    def to(self, device: torch.device) -> "OnlineTeacher":
        self.encoder.to(device)
        return self

    @torch.no_grad()
    def targets(self, batch: dict, images: torch.Tensor) -> torch.Tensor:
        """B x C x G x G float32 embeddings of the frozen SAM encoder on the student's own input."""
        return self.encoder(images).float()


def load_sam_teacher(teacher: WeightsSource) -> Sam:
    """A SAM ViT of any size from any SAM file `load_sam` reads (official, transformers, or a bigl-sam file
    of a SAM ViT; its path, or the file read already); a student is one `CheckpointError`."""
    weights = as_weights(teacher)
    model = load_sam(weights)
    if is_student(model):
        raise CheckpointError(
            f"{weights.source}: holds the big.LITTLE student {model.config.name}, not a SAM model; "
            f"--teacher-checkpoint takes a SAM-layout checkpoint (the one the student starts from)"
        )
    return model


def check_fits(model: Sam, teacher) -> None:
    """The student makes embeddings of the teacher's shape from inputs of the teacher's size."""
    vit = sam_vit_config(model.config)
    grid = vit.img_size // vit.patch_size
    produced = (vit.out_chans, grid, grid)
    if vit.img_size != teacher.img_size or produced != tuple(teacher.embedding_shape):
        raise BiglSamError(
            f"{teacher.where}: teacher embeddings are {tuple(teacher.embedding_shape)} from {teacher.img_size}px "
            f"inputs; student {model.config.name} makes {produced} from {vit.img_size}px"
        )


def check_images_exist(cache: TeacherCache) -> None:
    """Fails before the first step, not hours in, when the images the cache was built from have moved."""
    missing = sorted({e.image_id for e in cache.entries if not (cache.images_root / e.image_id).is_file()})
    if missing:
        raise BiglSamError(
            f"{cache.images_root}: {len(missing)} images of the cache {cache.root} are missing, e.g. {missing[0]}"
        )
