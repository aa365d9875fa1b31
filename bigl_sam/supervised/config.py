"""Every option of `bigl-sam train`, declared once (`bigl_sam.training.config.option`)."""

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import BiglSamError
from ..modeling.config import MODEL_CONFIGS, is_student
from ..training.config import check_fields, dtype_option, option

PARTS = ("encoder", "decoder", "prompt")  # image encoder, mask decoder, prompt encoder


@dataclass
class MaskTrainConfig:
    """The options of `bigl-sam train` (each is one flag, `--name-with-dashes`); ckpt.pt keeps them all."""

    out: str = option(help="run folder: checkpoints, CSV and TensorBoard logs, final.pth", identity=False)
    model: str = option(help="registry key of the model to train: a SAM ViT (vit_b, vit_mini, ...) or a "
                        "big.LITTLE student (bigl_b_t, bigl_mini, ...)")
    annotations: str = option(help="COCO instances JSON: polygons, RLE or uncompressed RLE masks", identity=False)
    images: str = option(help="folder the file_name entries of --annotations are relative to", identity=False)
    # Read only when a run starts: a resumed run takes its weights from ckpt.pt.
    checkpoint: Optional[str] = option(
        None, "weights to start from (any file `--model` loads: an official SAM file, a student, a transformers "
        "folder); default: random initialisation drawn from --seed", identity=False)
    exclude: Optional[str] = option(
        None, "leave out of training every image whose file name is also in this folder (searched recursively), "
        "e.g. the photos of a held-out set", identity=False)
    train: str = option("encoder,decoder,prompt", "the parts that learn, comma-separated: encoder (the image "
                        "encoder), decoder (the mask decoder), prompt (the prompt encoder); the rest stay frozen")
    steps: int = option(10000, "optimizer steps of the whole run", check="positive")
    batch: int = option(4, "images per process and step; the global batch is that x processes", check="positive")
    masks_per_image: int = option(8, "at most this many of an image's instances per step, drawn at random",
                                  check="positive")
    lr: float = option(1e-4, "peak learning rate (AdamW)", check="positive")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine decay", check="non_negative")
    warmup: int = option(250, "linear warm-up steps", check="non_negative")
    weight_decay: float = option(0.1, "AdamW weight decay (none on biases, norms and embeddings of one dimension)",
                                 check="non_negative")
    grad_clip: float = option(1.0, "max gradient norm", check="positive")
    click_rounds: int = option(8, "corrective rounds after the first prompt, each adding one point drawn from the "
                               "error region of the previous mask (SAM: 8)", check="non_negative")
    mask_rounds: int = option(2, "rounds that add no point and only feed back the previous mask logits (SAM: 2, "
                              "one last, the others at random places among the corrective rounds)",
                              check="non_negative")
    prompts_per_mask: int = option(
        1, "first prompts drawn for each mask per step, each prompted on its own: a dataset with few masks per image "
        "gives the mask decoder more to learn from per image encoded (SAM's images have up to 64 masks)",
        check="positive")
    box_share: float = option(0.5, "share of instances whose first prompt is their box (the others: one point)",
                              check="non_negative")
    box_noise: float = option(0.1, "std of the noise on each box coordinate, as a share of the box side (at most "
                              "20 pixels of a 1024-pixel input)", check="non_negative")
    focal_weight: float = option(20.0, "weight of the focal loss on the mask logits", check="non_negative")
    dice_weight: float = option(1.0, "weight of the dice loss on the mask logits", check="non_negative")
    iou_weight: float = option(1.0, "weight of the MSE between predicted and reached IoU", check="non_negative")
    flip: float = option(0.5, "probability of a horizontal flip", check="non_negative")
    min_crop: float = option(0.5, "a random crop keeps this share of each side or more (1: no crop)",
                             check="positive")
    copy_paste: float = option(0.0, "probability of pasting the instances of another training image onto the image "
                               "(they occlude what they cover)", check="non_negative")
    keep_ratio_range: Tuple[float, float] = option(
        (0.15, 0.5), "LOW,HIGH: for students, the keep ratio is drawn from it per step")
    val_annotations: Optional[str] = option(
        None, "held-out COCO instances JSON: box and 1-point mIoU through `eval coco`'s engine", identity=False)
    val_images: Optional[str] = option(None, "folder of --val-annotations' images", identity=False)
    val_max_images: Optional[int] = option(None, "evaluate on the first N held-out images only", identity=False,
                                           check="positive")
    eval_every: int = option(500, "held-out mIoU every N steps and at the end; 0: never", identity=False,
                             check="non_negative")
    ckpt_every: int = option(250, "write RUN/ckpt.pt every N steps and at the end", identity=False, check="positive")
    seed: int = option(0, "seed of the data order, augmentations, prompts, keep ratios and a random start")
    dtype: str = dtype_option()
    workers: int = option(2, "data loader processes", identity=False, check="non_negative")
    device: Optional[str] = option(None, "default: this process's GPU if there is one, else cpu", identity=False)
    resume: bool = option(False, "continue from RUN/ckpt.pt (start fresh if there is none yet)", identity=False)

    def parts(self) -> Tuple[str, ...]:
        return tuple(part.strip() for part in self.train.split(","))


def check_config(cfg: MaskTrainConfig) -> None:
    """Every option checked before any work: one error line naming the option."""
    check_fields(cfg)
    if cfg.model not in MODEL_CONFIGS:
        raise BiglSamError(f"--model {cfg.model}: unknown; known: {', '.join(sorted(MODEL_CONFIGS))}")
    unknown = [part for part in cfg.parts() if part not in PARTS]
    if unknown or not cfg.parts():
        raise BiglSamError(f"--train {cfg.train}: parts are {', '.join(PARTS)} (comma-separated), got {unknown}")
    lo, hi = cfg.keep_ratio_range
    if not 0 < lo <= hi <= 1:
        raise BiglSamError(f"--keep-ratio-range {lo},{hi}: need 0 < low <= high <= 1")
    for name in ("box_share", "flip", "copy_paste", "min_crop"):
        if getattr(cfg, name) > 1:
            raise BiglSamError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at most 1")
    if bool(cfg.val_annotations) != bool(cfg.val_images):
        raise BiglSamError("--val-annotations and --val-images go together")
    if cfg.keep_ratio_range != MaskTrainConfig.keep_ratio_range and not is_student(MODEL_CONFIGS[cfg.model]):
        raise BiglSamError(f"--keep-ratio-range: {cfg.model} is SAM's own encoder, only big.LITTLE students route tokens")
