"""The training loop of `bigl-sam train` (one optimizer step per batch of images, every instance prompted
for several rounds), and the held-out mIoU during training.

Run layout (`--out RUN`), as `distill train`'s:
    ckpt.pt      training state every `ckpt_every` steps: model, optimizer, RNG, step, the whole config and a
                 fingerprint of the training data (atomic writes)
    final.pth    the trained model, loadable with the registry, `load_sam` and every `--checkpoint`
    train.csv    step, lr, keep ratio, loss terms, IoU reached in the first and last rounds, gradient norm
    eval.csv     held-out box and 1-point mIoU (x100) through `eval coco`'s engine
    tb/          the same curves for TensorBoard

A non-finite loss or gradient stops the run with an error naming the step, before the update.
"""

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed
from ..build import build_model, build_sam, build_student_from_sam
from ..checkpoint import read_model
from ..evaluation.coco import CocoInstances
from ..evaluation.coco_jobs import miou_job
from ..evaluation.instances import CocoMiou
from ..evaluation.protocol import Protocol
from ..evaluation.runner import score_in_memory
from ..modeling.config import get_config, is_student, keep_ratio_of
from ..training.config import identity, run_dtype, settings
from ..training.optimizer import adamw, freeze_router_biases
from ..training.ranks import mean_over_ranks
from ..training.runlog import RunLog
from ..training.sampler import StreamSampler, make_loader
from ..training.schedule import PROMPTS, keep_ratio_at, seeded_generator
from ..training.state import load_state, model_from_state, refuse_overwrite, restore
from ..training.steps import finish, run_in_process, save_if_due, set_learning_rate, update
from .config import MaskTrainConfig, check_config
from .data import MaskDataset, collate, training_images
from .losses import dice, focal, reached_iou
from .prompts import corrective_points, first_points, join, noisy_boxes, round_kinds

TRAIN_FIELDS = ("step", "lr", "keep_ratio", "loss", "focal", "dice", "iou_mse", "iou_first", "iou_last", "grad_norm",
                "seconds")
EVAL_FIELDS = ("step", "prompt", "miou", "instances", "keep_ratio")
VAL_PROMPTS = ("box", "point")  # `eval coco --prompt box` and `--prompt point`, default protocol
VAL_BATCH = 16  # prompts decoded at once, as `eval coco --batch-size`


class PromptedSam(torch.nn.Module):
    """A step's whole forward pass: the batch's images encoded once, then every instance prompted round
    after round; returns the loss terms (so that DDP wraps one module)."""

    def __init__(self, sam: Sam, cfg: MaskTrainConfig) -> None:
        super().__init__()
        self.sam, self.cfg = sam, cfg

    def forward(self, images: torch.Tensor, input_size: torch.Tensor, masks: Sequence[torch.Tensor],
                boxes: Sequence[torch.Tensor], keep_ratio: Optional[float],
                generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """images: B x 3 x S x S; input_size: B x 2 (h, w pixels); masks[b]: M_b x S/4 x S/4 bool;
        boxes[b]: M_b x 4 XYXY input pixels -> mean loss terms over prompts (each instance `prompts_per_mask` times)
        and rounds."""
        encoder = self.sam.image_encoder
        if is_student(encoder):
            sizes = [tuple(hw) for hw in input_size.tolist()]  # the P-path budget goes to image tokens only
            embeddings = encoder(images, keep_ratio=keep_ratio, input_size=sizes)
        else:
            embeddings = encoder(images)
        kinds = round_kinds(self.cfg.click_rounds, self.cfg.mask_rounds, generator)
        sums: Dict[str, torch.Tensor] = {}
        repeats = self.cfg.prompts_per_mask
        for b in range(len(images)):
            gt, tight = masks[b].repeat(repeats, 1, 1), boxes[b].repeat(repeats, 1)
            use_box = torch.rand(len(gt), generator=generator) < self.cfg.box_share
            for group in (use_box, ~use_box):
                if group.any():
                    box = tight[group] if group is use_box else None
                    for name, value in self._rounds(embeddings[b : b + 1], gt[group], box, kinds, generator).items():
                        sums[name] = sums.get(name, 0) + value
        count = sum(len(m) for m in masks) * repeats
        rounds = len(kinds) + 1
        terms = {name: sums[name] / (count * (1 if name.startswith("iou_") and name != "iou_mse" else rounds))
                 for name in ("focal", "dice", "iou_mse", "iou_first", "iou_last")}
        terms["loss"] = sums["loss"] / (count * rounds)
        return terms

    def _rounds(self, embedding: torch.Tensor, gt: torch.Tensor, boxes: Optional[torch.Tensor],
                kinds: List[bool], generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """One group of instances of one image (all box-prompted, or all point-prompted), every round;
        embedding: 1 x C x G x G, gt: M x L x L bool. Returns the sums over instances and rounds."""
        cfg, sam, device = self.cfg, self.sam, embedding.device
        target = gt.to(device).float()
        box = None if boxes is None else noisy_boxes(boxes, cfg.box_noise, sam.image_encoder.img_size,
                                                     generator).to(device)
        points = None if boxes is not None else first_points(gt, generator)
        logits_in, pred = None, None
        sums: Dict[str, torch.Tensor] = {}
        picked = torch.arange(len(gt), device=device)
        for r, adds_point in enumerate([False] + kinds):
            if adds_point:
                points = join(points, corrective_points(pred, gt, generator))
            sparse, dense = sam.prompt_encoder(
                points=None if points is None else (points[0].to(device), points[1].to(device)),
                boxes=box, masks=logits_in)
            low, iou_pred = sam.mask_decoder(
                image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=r == 0 and box is None)  # one point is ambiguous: SAM's three masks
            low, iou_pred = low.float(), iou_pred.float()
            truth = target[:, None].expand_as(low)
            focal_terms, dice_terms = focal(low, truth), dice(low, truth)
            mask_terms = cfg.focal_weight * focal_terms + cfg.dice_weight * dice_terms
            reached = reached_iou(low.detach(), truth)
            iou_terms = ((iou_pred - reached) ** 2).mean(dim=1)  # every output learns its own IoU
            best = mask_terms.detach().argmin(dim=1)  # of several outputs, only the best one's mask loss counts
            round_terms = {"loss": mask_terms[picked, best] + cfg.iou_weight * iou_terms,
                           "focal": focal_terms[picked, best], "dice": dice_terms[picked, best], "iou_mse": iou_terms}
            for name, value in round_terms.items():
                sums[name] = sums.get(name, 0) + value.sum()
            chosen = low[picked, best].detach()
            logits_in, pred = chosen[:, None], (chosen > 0).cpu()
            if r == 0:
                sums["iou_first"] = reached[picked, best].sum()
        sums["iou_last"] = reached[picked, best].sum()
        return sums


@dataclass
class Run:
    cfg: MaskTrainConfig
    model: Sam
    trainee: torch.nn.Module  # `PromptedSam`, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    process: distributed.Process
    dtype: str


def train(cfg: MaskTrainConfig) -> Path:
    """Trains `cfg.model` on the masks of `cfg.annotations`; returns the path of the final checkpoint."""
    check_config(cfg)
    return run_in_process(cfg.device, lambda process: _train(cfg, process))


def _train(cfg: MaskTrainConfig, process: distributed.Process) -> Path:
    out = Path(cfg.out)
    dataset = CocoInstances(cfg.annotations, cfg.images)
    image_ids, excluded = training_images(dataset, Path(cfg.exclude) if cfg.exclude else None)
    validation = validation_jobs(cfg)
    run_settings = {**settings(cfg), "data": data_fingerprint(dataset, image_ids)}
    state = load_state(out, {**identity(cfg), "data": run_settings["data"]}, process) if cfg.resume \
        else refuse_overwrite(out)
    model = model_from_state(state) if state else start_model(cfg)
    model.to(process.device)
    trainable(model, cfg.parts())
    optimizer = adamw(model, cfg.weight_decay)
    start_step = restore(state, optimizer)
    dtype = run_dtype(cfg.dtype, process.device)
    if process.is_main:
        distributed.note_bfloat16(process.device, dtype)
        tqdm.write(f"train: {len(image_ids)} images of {dataset.annotations_path}"
                   + (f" ({excluded} left out: also under {cfg.exclude}, by file name or content)" if excluded else ""),
                   file=sys.stderr)
    trainee = PromptedSam(model, cfg)
    if process.world_size > 1:
        trainee = DistributedDataParallel(trainee, find_unused_parameters=True)
    run = Run(cfg, model, trainee, optimizer, process, dtype)
    vit = model.image_encoder
    data = MaskDataset(dataset, image_ids, vit.img_size, model.pixel_mean, model.pixel_std, cfg.seed,
                       cfg.masks_per_image, cfg.flip, cfg.min_crop, cfg.copy_paste)
    sampler = StreamSampler(len(data), cfg.batch, process, cfg.seed, start_step, cfg.steps)
    loader = make_loader(data, sampler, cfg.workers, process, collate)
    log = RunLog(out, start_step, TRAIN_FIELDS, EVAL_FIELDS) if process.is_main else None
    progress = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", disable=not process.is_main)
    with progress:
        for step, batch in zip(range(start_step, cfg.steps), loader):
            row = train_step(run, batch, step)
            done = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.4f}", iou=f"{row['iou_last']:.3f}")
            if log:
                log.train(row)
                if validation and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                    rows = validate(model, validation, process.device, dtype, done)
                    log.eval(done, rows, {f"heldout/miou_{r['prompt']}": r["miou"] for r in rows})
                    progress.write("step {}: held-out mIoU {}".format(
                        done, ", ".join(f"{r['prompt']} {r['miou']:.2f}" for r in rows)))
            save_if_due(out, model, optimizer, done, cfg, run_settings, process)
    return finish(out, model, model, process, log)


def train_step(run: Run, batch: dict, step: int) -> dict:
    """One optimizer step; returns its log row (terms averaged over processes). A non-finite loss or
    gradient raises before the update."""
    began = time.perf_counter()
    cfg, process, device = run.cfg, run.process, run.process.device
    lr = set_learning_rate(run.optimizer, step, cfg)
    ratio = keep_ratio_at(step, cfg.keep_ratio_range, cfg.seed) if is_student(run.model.image_encoder) else None
    generator = seeded_generator(cfg.seed, PROMPTS, step, process.rank)
    with distributed.autocast(device, run.dtype):
        terms = run.trainee(batch["image"].to(device), batch["input_size"], batch["masks"], batch["boxes"], ratio,
                            generator)
    terms["loss"].backward()
    params = [p for p in run.model.parameters() if p.requires_grad]
    terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    row = {"step": step + 1, "lr": lr, "keep_ratio": "" if ratio is None else ratio,
           **mean_over_ranks(terms, process)}
    update(run.optimizer, row, Path(cfg.out))
    row["seconds"] = time.perf_counter() - began
    return row


def start_model(cfg: MaskTrainConfig) -> Sam:
    """The model a new run starts from: `cfg.checkpoint` (a student from a SAM file: P-path, prompt encoder
    and decoder from it, router and E-path fresh) or random weights, both drawn from `cfg.seed`."""
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint is None:
        return build_model(get_config(cfg.model))
    weights = read_model(cfg.checkpoint)
    if is_student(get_config(cfg.model)) and not is_student(weights):
        return build_student_from_sam(cfg.model, weights)
    return build_sam(cfg.model, weights)


def trainable(model: Sam, parts: Sequence[str]) -> None:
    """Only `parts` (encoder, decoder, prompt) learn; the others are frozen, out of the optimizer."""
    modules = {"encoder": model.image_encoder, "decoder": model.mask_decoder, "prompt": model.prompt_encoder}
    model.requires_grad_(False)
    for part in parts:
        modules[part].requires_grad_(True)
    if "encoder" in parts and is_student(model.image_encoder):
        freeze_router_biases(model.image_encoder)
    model.train()


def data_fingerprint(dataset: CocoInstances, image_ids: Sequence[int]) -> str:
    """What a resumed run must train on again: the annotation file's content and the images chosen."""
    names = "\n".join(str(dataset.coco.imgs[i]["file_name"]) for i in image_ids)
    return hashlib.sha256(f"{dataset.sha256}\n{names}".encode()).hexdigest()


def validation_jobs(cfg: MaskTrainConfig) -> List[CocoMiou]:
    """`eval coco`'s box and 1-point jobs (default protocol) on the held-out set; none without one."""
    if not cfg.val_annotations:
        return []
    return [miou_job(Path(cfg.val_annotations), Path(cfg.val_images), Protocol(prompt), VAL_BATCH, cfg.val_max_images)
            for prompt in VAL_PROMPTS]


@torch.no_grad()
def validate(model: Sam, jobs: Sequence[CocoMiou], device: torch.device, dtype: str, step: int) -> List[dict]:
    """Held-out mIoU (x100, all instances) of each job, scored image by image as `eval coco` scores them,
    at the keep ratio the model would be saved with."""
    model.eval()
    predictor = SamPredictor(model)
    rows = []
    for job in jobs:
        summary = score_in_memory(job, predictor, device, dtype, model.config.name)
        rows.append({"step": step, "prompt": job.protocol.prompt, "miou": summary["miou"]["all"],
                     "instances": summary["instances"]["all"], "keep_ratio": keep_ratio_of(model) or ""})
    model.train()
    return rows

