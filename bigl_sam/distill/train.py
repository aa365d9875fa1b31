"""Student training in one loop (nanoGPT style): every knob is a field of `TrainConfig` and a
`bigl-sam distill train` option. The parts live beside it: `teacher.py` (where targets come from: a cache,
or the SAM file's own encoder on the fly), `student.py`, `sampler.py` (data order, held-out split),
`schedule.py` (learning rate and keep ratio per step), `state.py` (checkpoints, resume), `runlog.py`
(CSV and TensorBoard curves), `ranks.py` (what the processes of a `torchrun` run agree on).

Run layout (`--out RUN`):
    ckpt.pt      training state every `ckpt_every` steps: model, optimizer, RNG, step (atomic writes)
    final.pth    the student, loadable with `sam_model_registry[name](checkpoint=...)` and `load_sam`
    train.csv    step, lr, keep_ratio, loss terms, gradient norms, seconds per step
    eval.csv     held-out loss at fixed keep ratios
    tb/          the same curves for TensorBoard

A non-finite loss or gradient stops the run with an error naming the step, before the update: the
weights in ckpt.pt stay those of the last good checkpoint.
"""

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from segment_anything.modeling import Sam
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed
from ..checkpoint import ModelReader
from ..errors import BiglSamError
from .data import LOSS_REGIONS, collate, loss_region
from .losses import embedding_loss, mask_loss
from .ranks import check_ranks_agree, mean_over_ranks
from .runlog import RunLog
from .sampler import StreamSampler, make_loader, split_holdout
from .schedule import eval_keep_ratios, keep_ratio_at, learning_rate, step_generator
from .state import (
    FINAL_FILE, STATE_FILE, load_state, refuse_overwrite, restore, save_final, save_training_state, student_from_state,
)
from .student import build_student, student_for, trainable_encoder
from .teacher import CachedTeacher, OnlineTeacher, check_fits

SELF_DISTILL_MASK_WEIGHT = 1.0  # the mask-level loss is on by default with --teacher-from


@dataclass
class TrainConfig:
    out: str
    # The student: a registry name (bigl_b_t, ...) or a bigl-sam student checkpoint to continue from;
    # None with --teacher-from: the student registered for the teacher's size.
    student: Optional[str] = None
    cache: Optional[str] = None  # teacher cache folder (distilling a bigger teacher, e.g. ViT-H)
    teacher_from: Optional[str] = None  # SAM-layout file whose frozen encoder runs on the fly (self-distillation)
    images: Optional[str] = None  # image folder, with --teacher-from
    init_from: Optional[str] = None  # SAM file for the P-path; None: --teacher-from's file, else random
    decoder_from: Optional[str] = None  # SAM file for prompt encoder + mask decoder; None: --teacher-from's
    steps: int = 10000
    batch: int = 8  # per process; the global batch is batch x processes
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup: int = 500
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    keep_ratio_range: Tuple[float, float] = (0.15, 0.5)
    cosine_weight: float = 1.0
    mask_weight: Optional[float] = None  # mask-level loss through the frozen decoder; None: on with --teacher-from
    freeze_source: bool = False  # only routers and E-paths learn; the P-path stays the source SAM's
    loss_region: str = "full"  # embedding cells the loss averages over: "full" grid or the image's "valid" cells
    holdout: int = 8  # images kept out of training for the held-out curves
    eval_every: int = 500  # held-out curves every N steps and at the end; 0: never (the images stay held out)
    ckpt_every: int = 500
    seed: int = 0
    amp: str = "auto"  # "bf16", "none", or "auto" (bf16 on GPU)
    workers: int = 2
    device: Optional[str] = None
    resume: bool = False


# Fields that fix what a run computes; a resumed run must not change them.
RUN_IDENTITY = (
    "student", "cache", "teacher_from", "images", "steps", "batch", "lr", "min_lr", "warmup", "weight_decay",
    "grad_clip", "keep_ratio_range", "cosine_weight", "mask_weight", "freeze_source", "loss_region", "holdout",
    "seed",
)


def train(cfg: TrainConfig) -> Path:
    """Trains the student; returns the path of the final checkpoint."""
    check_config(cfg)
    process = distributed.start(cfg.device)
    try:
        return _train(cfg, process)
    finally:
        distributed.stop(process)


def _train(cfg: TrainConfig, process: distributed.Process) -> Path:
    out = Path(cfg.out)
    read = ModelReader()  # --teacher-from, --init-from and --decoder-from are most often one file
    teacher = OnlineTeacher(read(cfg.teacher_from), cfg.images) if cfg.teacher_from else CachedTeacher(cfg.cache)
    cfg = resolve(cfg, teacher)
    state = load_state(out, identity(cfg), process) if cfg.resume else refuse_overwrite(out)
    if state:
        model = student_from_state(state)
    else:
        model = build_student(cfg.student, cfg.init_from, cfg.decoder_from, cfg.seed, read)
    del read  # the weights it read now live in the models
    check_fits(model, teacher)
    model.to(process.device)
    teacher.to(process.device)
    encoder = trainable_encoder(model, cfg.freeze_source)
    trainer = DistributedDataParallel(encoder) if process.world_size > 1 else encoder
    optimizer = adamw(encoder, cfg.weight_decay)
    start_step = restore(state, optimizer)
    train_items, heldout_items = split_holdout(teacher.image_ids, cfg.holdout)
    sampler = StreamSampler(len(train_items), cfg.batch, process, cfg.seed, start_step, cfg.steps)
    loader = make_loader(teacher.dataset(train_items, model), sampler, cfg.workers, process)
    heldout = teacher.dataset(heldout_items, model)
    log = RunLog(out, start_step) if process.is_main else None
    progress = tqdm(total=cfg.steps, initial=start_step, desc="distill", unit="step", disable=not process.is_main)
    dtype = amp_dtype(cfg.amp, process.device)
    if process.is_main:
        distributed.note_bfloat16(process.device, dtype)
    autocast = distributed.autocast(process.device, dtype)
    with progress:
        for step, batch in zip(range(start_step, cfg.steps), loader):
            row = train_step(model, trainer, teacher, optimizer, batch, step, cfg, process, autocast)
            done = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.4f}", r=f"{row['keep_ratio']:.2f}")
            if log:
                log.train(row)
                if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                    log.eval(done, evaluate(model, teacher, heldout, cfg, autocast))
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                if process.is_main:
                    save_training_state(out, model, optimizer, done, identity(cfg))
                distributed.barrier(process)
    check_ranks_agree(encoder, process)
    if log:
        log.close()
    final = save_final(out, model) if process.is_main else out / FINAL_FILE
    distributed.barrier(process)
    return final


def train_step(model, trainer, teacher, optimizer, batch: dict, step: int, cfg: TrainConfig, process, autocast) -> dict:
    """One optimizer step; returns its log row (losses averaged over processes). A non-finite loss or
    gradient raises before the update."""
    began = time.perf_counter()
    lr = learning_rate(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    ratio = keep_ratio_at(step, cfg.keep_ratio_range, cfg.seed)
    images = batch["image"].to(process.device, non_blocking=True)
    valid_hw = batch["valid_hw"].to(process.device)
    with autocast:
        target = teacher.targets(batch, images)
        losses = compute_losses(model, trainer, images, target, valid_hw, ratio, cfg,
                                step_generator(cfg.seed, step, process.rank))
    losses["loss"].backward()
    losses["router_grad_norm"] = router_grad_norm(model.image_encoder)
    losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.image_encoder.parameters(), cfg.grad_clip)
    row = {"step": step + 1, "lr": lr, "keep_ratio": ratio, **mean_over_ranks(losses, process)}
    if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
        raise BiglSamError(
            f"step {step + 1}: non-finite loss ({row['loss']}) or gradient norm ({row['grad_norm']}); stopped "
            f"before the update, {Path(cfg.out) / STATE_FILE} (if written) keeps the last good weights"
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    row["seconds"] = time.perf_counter() - began
    return row


def compute_losses(
    model: Sam, encoder: torch.nn.Module, images: torch.Tensor, teacher: torch.Tensor, valid_hw: torch.Tensor,
    ratio: float, cfg: TrainConfig, generator: torch.Generator,
) -> Dict[str, torch.Tensor]:
    """images: B x 3 x S x S, teacher: B x C x G x G, valid_hw: B x 2 -> loss terms (scalars)."""
    extents = [tuple(hw) for hw in valid_hw.tolist()]  # the P-path budget goes to image tokens only
    student = encoder(images, keep_ratio=ratio, input_size=extents).float()
    region = loss_region(cfg.loss_region, valid_hw, teacher.shape[-1], images.shape[-1])
    terms = embedding_loss(student, teacher, region)
    terms["loss"] = terms["mse"] + cfg.cosine_weight * terms["cosine"]
    if cfg.mask_weight > 0:
        terms["mask"] = mask_loss(model, student, teacher, valid_hw, generator)
        terms["loss"] = terms["loss"] + cfg.mask_weight * terms["mask"]
    return terms


def router_grad_norm(encoder: torch.nn.Module) -> torch.Tensor:
    """L2 norm of the routers' weight gradients (before clipping): is the router learning at all?"""
    grads = [block.router.weight.grad for block in encoder.blocks if block.router.weight.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.stack([g.detach().float().norm() for g in grads]).norm()


@torch.no_grad()
def evaluate(model: Sam, teacher, heldout, cfg: TrainConfig, autocast) -> Dict[float, Dict[str, float]]:
    """Held-out loss terms at each of `eval_keep_ratios`, on the original images (epoch 0)."""
    if len(heldout) == 0:
        return {}
    encoder = model.image_encoder
    encoder.eval()
    device = model.pixel_mean.device
    sums: Dict[float, Dict[str, float]] = {ratio: {} for ratio in eval_keep_ratios(cfg.keep_ratio_range)}
    for start in range(0, len(heldout), cfg.batch):
        batch = collate([heldout[(i, 0)] for i in range(start, min(start + cfg.batch, len(heldout)))])
        images, valid_hw = batch["image"].to(device), batch["valid_hw"].to(device)
        with autocast:
            target = teacher.targets(batch, images)
            for ratio, totals in sums.items():
                generator = torch.Generator().manual_seed(cfg.seed)
                terms = compute_losses(model, encoder, images, target, valid_hw, ratio, cfg, generator)
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value.item() * len(images)
    encoder.train()
    return {ratio: {name: total / len(heldout) for name, total in totals.items()} for ratio, totals in sums.items()}


def adamw(encoder: torch.nn.Module, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and layer scales (the 1-D parameters). The learning rate is
    set at every step from the schedule."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype:
    """--amp as the dtype the student and teacher run in: auto is bfloat16 on GPU, float32 on CPU."""
    use_bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.bfloat16 if use_bf16 else torch.float32


def check_config(cfg: TrainConfig) -> None:
    """Every option checked before any work: one error line naming the option."""
    if bool(cfg.cache) == bool(cfg.teacher_from):
        raise BiglSamError("give the teacher as either --cache (a teacher cache) or --teacher-from (a SAM file)")
    if cfg.teacher_from and not cfg.images:
        raise BiglSamError("--teacher-from needs --images, the folder of images to distil on")
    if cfg.cache and cfg.images:
        raise BiglSamError("--images goes with --teacher-from; a --cache already names its images")
    if cfg.cache and not cfg.student:
        raise BiglSamError("--student is required with --cache (bigl_b_t, ... or a student checkpoint)")
    lo, hi = cfg.keep_ratio_range
    if not 0 < lo <= hi <= 1:
        raise BiglSamError(f"--keep-ratio-range {lo},{hi}: need 0 < low <= high <= 1")
    for name in ("steps", "batch", "ckpt_every"):
        if getattr(cfg, name) < 1:
            raise BiglSamError(f"{_option(name)} {getattr(cfg, name)}: must be at least 1")
    for name in ("warmup", "holdout", "workers", "eval_every"):
        if getattr(cfg, name) < 0:
            raise BiglSamError(f"{_option(name)} {getattr(cfg, name)}: must not be negative")
    for name, positive in (("lr", True), ("grad_clip", True), ("min_lr", False), ("weight_decay", False),
                           ("cosine_weight", False), ("mask_weight", False)):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise BiglSamError(f"{_option(name)} {value}: must be a finite number {'>' if positive else '>='} 0")
    if cfg.amp not in ("auto", "bf16", "none"):
        raise BiglSamError(f"--amp {cfg.amp}: expected bf16, none or auto")
    if cfg.loss_region not in LOSS_REGIONS:
        raise BiglSamError(f"--loss-region {cfg.loss_region}: expected {' or '.join(LOSS_REGIONS)}")


def resolve(cfg: TrainConfig, teacher) -> TrainConfig:
    """The defaults that depend on the teacher, filled in (so a resumed run compares what was used)."""
    if isinstance(teacher, OnlineTeacher):
        return dataclasses.replace(
            cfg,
            student=cfg.student or student_for(teacher.config, cfg.teacher_from),
            init_from=cfg.init_from or cfg.teacher_from,
            decoder_from=cfg.decoder_from or cfg.teacher_from,
            mask_weight=SELF_DISTILL_MASK_WEIGHT if cfg.mask_weight is None else cfg.mask_weight,
        )
    return dataclasses.replace(cfg, mask_weight=0.0 if cfg.mask_weight is None else cfg.mask_weight)


def identity(cfg: TrainConfig) -> dict:
    """The settings that fix what the run computes, as plain types (stored in ckpt.pt)."""
    data = dataclasses.asdict(cfg)
    return {name: list(data[name]) if isinstance(data[name], tuple) else data[name] for name in RUN_IDENTITY}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")
