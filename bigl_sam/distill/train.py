"""Student training in one loop (nanoGPT style): every knob is a field of `TrainConfig` (`config.py`) and a
`bigl-sam distill train` option. The parts live beside it: `teacher.py` (where targets come from: a cache,
or the SAM file's own encoder on the fly), `student.py`, `sampler.py` (data order, held-out split),
`schedule.py` (learning rate and keep ratio per step), `state.py` (checkpoints, resume), `runlog.py`
(CSV and TensorBoard curves), `ranks.py` (what the processes of a `torchrun` run agree on).

Run layout (`--out RUN`):
    ckpt.pt      training state every `ckpt_every` steps: model, optimizer, RNG, step and the whole
                 `TrainConfig` (atomic writes)
    final.pth    the student, loadable with `sam_model_registry[name](checkpoint=...)` and `load_sam`
    train.csv    step, lr, keep_ratio, loss terms, gradient norms, seconds per step
    eval.csv     held-out loss at fixed keep ratios
    tb/          the same curves for TensorBoard

A non-finite loss or gradient stops the run with an error naming the step, before the update: the
weights in ckpt.pt stay those of the last good checkpoint.
"""

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from segment_anything.modeling import Sam
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed
from ..checkpoint import ModelReader
from ..errors import BiglSamError
from ..modeling.config import MODEL_CONFIGS, is_student
from ..modeling.random_routing import with_random_routing
from ..training.config import check_fields, identity, run_dtype, settings
from ..training.optimizer import adamw, router_grad_norm
from ..training.ranks import mean_over_ranks
from ..training.runlog import RunLog
from ..training.sampler import StreamSampler, make_loader, split_holdout
from ..training.schedule import EVAL_PROMPTS, PROMPTS, eval_keep_ratios, keep_ratio_at, seeded_generator
from ..training.state import load_state, model_from_state, refuse_overwrite, restore
from ..training.steps import finish, keep_if_due, run_in_process, save_if_due, set_learning_rate, update
from .config import TrainConfig
from .data import collate, loss_region
from .losses import embedding_loss, mask_loss
from .student import build_student, student_for, trainable_encoder
from .teacher import CachedTeacher, OnlineTeacher, check_fits

TRAIN_FIELDS = ("step", "lr", "keep_ratio", "loss", "mse", "cosine", "mask", "grad_norm", "router_grad_norm", "seconds")
EVAL_FIELDS = ("step", "keep_ratio", "loss", "mse", "cosine", "mask")
SELF_DISTILL_MASK_WEIGHT = 1.0  # the mask-level loss is on by default with --teacher-checkpoint


@dataclass
class Run:
    """What every step of a run works with."""

    cfg: TrainConfig
    model: Sam  # the whole student: its frozen prompt encoder and mask decoder give the mask loss
    encoder: torch.nn.Module  # the student's image encoder as a step calls it (DDP-wrapped under torchrun)
    teacher: Union[CachedTeacher, OnlineTeacher]
    optimizer: torch.optim.Optimizer
    process: distributed.Process
    autocast: torch.autocast  # `distributed.autocast` of the run's precision


def train(cfg: TrainConfig) -> Path:
    """Trains the student; returns the path of the final checkpoint."""
    cfg = former_student_file(cfg)
    check_config(cfg)
    return run_in_process(cfg.device, lambda process: _train(cfg, process))


def _train(cfg: TrainConfig, process: distributed.Process) -> Path:
    out = Path(cfg.out)
    read = ModelReader()  # the teacher, encoder and decoder checkpoints are most often one file
    if cfg.teacher_checkpoint:
        teacher = OnlineTeacher(read(cfg.teacher_checkpoint), cfg.images)
    else:
        teacher = CachedTeacher(cfg.cache)
    cfg = resolve(cfg, teacher)
    state = load_state(out, identity(cfg), process) if cfg.resume else refuse_overwrite(out)
    if state:
        model = model_from_state(state)
    else:
        model = build_student(cfg.student_checkpoint or cfg.student, cfg.encoder_checkpoint, cfg.decoder_checkpoint,
                              cfg.seed, read)
    del read  # the weights it read now live in the models
    check_fits(model, teacher)
    if cfg.routing == "random":
        with_random_routing(model, cfg.seed)
    model.to(process.device)
    teacher.to(process.device)
    encoder = trainable_encoder(model, cfg.freeze_source)
    optimizer = adamw(encoder, cfg.weight_decay)
    start_step = restore(state, optimizer)
    dtype = run_dtype(cfg.dtype, process.device)
    if process.is_main:
        distributed.note_bfloat16(process.device, dtype)
    run = Run(cfg, model, DistributedDataParallel(encoder) if process.world_size > 1 else encoder, teacher,
              optimizer, process, distributed.autocast(process.device, dtype))
    train_items, heldout_items = split_holdout(teacher.image_ids, cfg.holdout)
    sampler = StreamSampler(len(train_items), cfg.batch, process, cfg.seed, start_step, cfg.steps)
    loader = make_loader(teacher.dataset(train_items, model), sampler, cfg.workers, process)
    heldout = teacher.dataset(heldout_items, model)
    log = RunLog(out, start_step, TRAIN_FIELDS, EVAL_FIELDS) if process.is_main else None
    progress = tqdm(total=cfg.steps, initial=start_step, desc="distill", unit="step", disable=not process.is_main)
    with progress:
        for step, batch in zip(range(start_step, cfg.steps), loader):
            row = train_step(run, batch, step)
            done = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.4f}", r=row["keep_ratio"])
            if log:
                log.train(row)
                if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                    results = evaluate(run, heldout)
                    rows = [{"step": done, "keep_ratio": "" if ratio is None else ratio, **terms}
                            for ratio, terms in results.items()]
                    log.eval(done, rows, {"heldout/loss" + ("" if ratio is None else f"@keep{ratio:g}"): terms["loss"]
                                          for ratio, terms in results.items()})
            save_if_due(out, model, optimizer, done, cfg, settings(cfg), process)
            keep_if_due(out, model, done, cfg.keep_every, process)
    return finish(out, model, encoder, process, log)


def train_step(run: Run, batch: dict, step: int) -> dict:
    """One optimizer step; returns its log row (losses averaged over processes). A non-finite loss or
    gradient raises before the update."""
    began = time.perf_counter()
    cfg, process = run.cfg, run.process
    lr = set_learning_rate(run.optimizer, step, cfg)
    ratio = keep_ratio_at(step, cfg.keep_ratio_range, cfg.seed) if is_student(run.model) else None
    images = batch["image"].to(process.device, non_blocking=True)
    input_size = batch["input_size"].to(process.device)
    with run.autocast:
        target = run.teacher.targets(batch, images)
        losses = compute_losses(run, run.encoder, images, target, input_size, ratio,
                                seeded_generator(cfg.seed, PROMPTS, step, process.rank))
    losses["loss"].backward()
    encoder = run.model.image_encoder
    losses["router_grad_norm"] = router_grad_norm(encoder)
    losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
    row = {"step": step + 1, "lr": lr, "keep_ratio": "" if ratio is None else round(ratio, 4),
           **mean_over_ranks(losses, process)}
    update(run.optimizer, row, Path(cfg.out))
    row["seconds"] = time.perf_counter() - began
    return row


def compute_losses(
    run: Run, encoder: torch.nn.Module, images: torch.Tensor, teacher: torch.Tensor, input_size: torch.Tensor,
    ratio: Optional[float], generator: torch.Generator,
) -> Dict[str, torch.Tensor]:
    """images: B x 3 x S x S, teacher: B x C x G x G, input_size: B x 2 (pixels) -> loss terms (scalars).
    `ratio`: the student's keep ratio (None: a dense student)."""
    cfg = run.cfg
    if ratio is None:
        student = encoder(images).float()
    else:
        sizes = [tuple(hw) for hw in input_size.tolist()]  # the P-path budget goes to image tokens only
        student = encoder(images, keep_ratio=ratio, input_size=sizes).float()
    region = loss_region(cfg.loss_region, input_size, teacher.shape[-1], images.shape[-1])
    terms = embedding_loss(student, teacher, region)
    terms["loss"] = terms["mse"] + cfg.cosine_weight * terms["cosine"]
    if cfg.mask_weight > 0:
        terms["mask"] = mask_loss(run.model, student, teacher, input_size, generator)
        terms["loss"] = terms["loss"] + cfg.mask_weight * terms["mask"]
    return terms


@torch.no_grad()
def evaluate(run: Run, heldout) -> Dict[float, Dict[str, float]]:
    """Held-out loss terms at each of `eval_keep_ratios`, on the original images (epoch 0)."""
    if len(heldout) == 0:
        return {}
    cfg, encoder = run.cfg, run.model.image_encoder
    encoder.eval()
    device = run.process.device
    ratios = eval_keep_ratios(cfg.keep_ratio_range) if is_student(encoder) else [None]
    sums: Dict[Optional[float], Dict[str, float]] = {ratio: {} for ratio in ratios}
    for start in range(0, len(heldout), cfg.batch):
        batch = collate([heldout[(i, 0)] for i in range(start, min(start + cfg.batch, len(heldout)))])
        images, input_size = batch["image"].to(device), batch["input_size"].to(device)
        with run.autocast:
            target = run.teacher.targets(batch, images)
            for ratio, totals in sums.items():
                terms = compute_losses(run, encoder, images, target, input_size, ratio, seeded_generator(cfg.seed, EVAL_PROMPTS))
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value.item() * len(images)
    encoder.train()
    return {ratio: {name: total / len(heldout) for name, total in totals.items()} for ratio, totals in sums.items()}


def check_config(cfg: TrainConfig) -> None:
    """Every option checked before any work: one error line naming the option. The checks of single
    fields come from their declaration (`option`'s `check` and `choices`)."""
    if bool(cfg.cache) == bool(cfg.teacher_checkpoint):
        raise BiglSamError("give the teacher as either --cache (a teacher cache) or --teacher-checkpoint (a SAM file)")
    if cfg.teacher_checkpoint and not cfg.images:
        raise BiglSamError("--teacher-checkpoint needs --images, the folder of images to distil on")
    if cfg.cache and cfg.images:
        raise BiglSamError("--images goes with --teacher-checkpoint; a --cache already names its images")
    if cfg.cache and not (cfg.student or cfg.student_checkpoint):
        raise BiglSamError("--cache needs the student: --student (bigl_b_t, ...) or --student-checkpoint (a file)")
    dense = cfg.student in MODEL_CONFIGS and not is_student(MODEL_CONFIGS[cfg.student])
    if dense and (cfg.freeze_source or cfg.routing != "router"):
        raise BiglSamError(f"--student {cfg.student} is a dense SAM ViT: it has no source to freeze and no router")
    if cfg.student and cfg.student_checkpoint:
        raise BiglSamError("give the student as either --student (a registry key) or --student-checkpoint (a file)")
    lo, hi = cfg.keep_ratio_range
    if not 0 < lo <= hi <= 1:
        raise BiglSamError(f"--keep-ratio-range {lo},{hi}: need 0 < low <= high <= 1")
    check_fields(cfg)


def former_student_file(cfg: TrainConfig) -> TrainConfig:
    """`--student FILE` of earlier versions is `--student-checkpoint FILE` now: taken, with a warning."""
    if cfg.student and cfg.student not in MODEL_CONFIGS and Path(cfg.student).is_file():
        print(f"warning: --student {cfg.student}: a file is now --student-checkpoint; the old use goes in the next "
              "release", file=sys.stderr)
        return dataclasses.replace(cfg, student=None, student_checkpoint=cfg.student)
    return cfg


def resolve(cfg: TrainConfig, teacher) -> TrainConfig:
    """The defaults that depend on the teacher, filled in, and the folders and files the run reads as absolute
    paths (`./p5` and `p5` are one folder), so a resumed run compares what was used."""
    cfg = dataclasses.replace(cfg, **{name: str(Path(getattr(cfg, name)).resolve())
                                      for name in ("cache", "images", "teacher_checkpoint") if getattr(cfg, name)})
    if isinstance(teacher, OnlineTeacher):
        return dataclasses.replace(
            cfg,
            student=cfg.student or (None if cfg.student_checkpoint else student_for(teacher.config,
                                                                                     cfg.teacher_checkpoint)),
            encoder_checkpoint=cfg.encoder_checkpoint or cfg.teacher_checkpoint,
            decoder_checkpoint=cfg.decoder_checkpoint or cfg.teacher_checkpoint,
            mask_weight=SELF_DISTILL_MASK_WEIGHT if cfg.mask_weight is None else cfg.mask_weight,
        )
    return dataclasses.replace(cfg, mask_weight=0.0 if cfg.mask_weight is None else cfg.mask_weight)
