"""Every option of `bigl-sam distill train`, declared once (`bigl_sam.training.config.option`) and without
torch, so that `bigl-sam distill --help` answers at once; the training itself is `train.py`."""

from dataclasses import dataclass
from typing import Optional, Tuple

from ..training.config import dtype_option, option

LOSS_REGIONS = ("full", "valid")  # `data.loss_region`: every embedding cell, or those that see the image
ROUTINGS = ("router", "random")


@dataclass
class TrainConfig:
    """Every knob of a training run, declared once: `distill train`'s flags are made from these fields
    (`cli.py`), the run identity and `check_config` read their metadata, ckpt.pt keeps them all."""

    out: str = option(help="run folder: checkpoints, CSV and TensorBoard logs", identity=False)
    student: Optional[str] = option(
        None, "registry key of the student (bigl_b_t, bigl_l_s, ...; a SAM ViT such as vit_micro: a dense student "
        "from random weights, MobileSAM's decoupled distillation); default with --teacher-checkpoint: the "
        "student of that SAM's size")
    # Read only when a run starts: a resumed run takes its student from ckpt.pt.
    student_checkpoint: Optional[str] = option(
        None, "a bigl-sam student file to continue distilling, instead of a fresh --student", identity=False)
    cache: Optional[str] = option(
        None, "teacher cache folder from `bigl-sam distill cache` (a bigger teacher, e.g. ViT-H)")
    teacher_checkpoint: Optional[str] = option(
        None, "self-distillation: this SAM-layout file's frozen encoder is the teacher, run on the fly on the same "
        "input (no cache); needs --images", former=("--teacher-from",))
    images: Optional[str] = option(None, "folder of images (searched recursively), with --teacher-checkpoint")
    # Both files are read only when a run starts: a resumed run takes its student from ckpt.pt.
    encoder_checkpoint: Optional[str] = option(
        None, "SAM checkpoint of the P-path's size (e.g. sam_vit_b_01ec64.pth); default: --teacher-checkpoint's "
        "file, else random", identity=False, former=("--init-from",))
    decoder_checkpoint: Optional[str] = option(
        None, "SAM checkpoint for the prompt encoder and mask decoder; default: --teacher-checkpoint's file",
        identity=False, former=("--decoder-from",))
    steps: int = option(10000, "optimizer steps of the whole run", check="positive")
    batch: int = option(8, "images per process and step; the global batch is that x processes", check="positive")
    lr: float = option(1e-4, "peak learning rate", check="positive")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine decay", check="non_negative")
    warmup: int = option(500, "linear warm-up steps", check="non_negative")
    weight_decay: float = option(0.05, "AdamW weight decay (none on biases, norms and layer scales)",
                                 check="non_negative")
    grad_clip: float = option(1.0, "max gradient norm", check="positive")
    keep_ratio_range: Tuple[float, float] = option((0.15, 0.5), "LOW,HIGH: the keep ratio is drawn from it per step")
    cosine_weight: float = option(1.0, "weight of (1 - cosine) next to the MSE", check="non_negative")
    mask_weight: Optional[float] = option(
        None, "> 0 adds the mask-level loss (decoder, prompts); default 1 with --teacher-checkpoint, else 0",
        check="non_negative")
    freeze_source: bool = option(
        False, "only the routers and E-paths learn; the P-path, embeddings and neck keep the source SAM's weights, "
        "so at keep 1.0 the student is that SAM plus the E-paths' learned updates")
    loss_region: str = option(
        "full", "embedding cells the loss covers: the full grid (padding too: SAM's decoder attends to it) or the "
        "image's valid cells", choices=LOSS_REGIONS)
    holdout: int = option(8, "images held out of training for the held-out loss curves", check="non_negative")
    eval_every: int = option(500, "held-out curves every N steps and at the end; 0: never (the images stay held out)",
                             identity=False, check="non_negative")
    ckpt_every: int = option(500, "write RUN/ckpt.pt every N steps and at the end", identity=False, check="positive")
    routing: str = option(
        "router", "which tokens take the P-path: the learned router's top K, or K drawn at random per image and "
        "layer (the quality study's control; the router then does not learn)", choices=ROUTINGS)
    keep_every: int = option(0, "also keep the student after every N steps as RUN/step-N.pth (quality against "
                             "steps); 0: never", identity=False, check="non_negative")
    seed: int = option(0, "seed of the data order, keep ratios, mask-loss prompts and a fresh student's draw")
    dtype: str = dtype_option()
    workers: int = option(2, "data loader processes", identity=False, check="non_negative")
    device: Optional[str] = option(None, "default: this process's GPU if there is one, else cpu", identity=False)
    resume: bool = option(False, "continue from RUN/ckpt.pt (start fresh if there is none yet)", identity=False)
