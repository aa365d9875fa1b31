"""Student training against the teacher cache, in one loop (nanoGPT style): every knob is a field of
`TrainConfig` and a `bigl-sam distill train` option.

Run layout (`--out RUN`):
    ckpt.pt      training state every `ckpt_every` steps: model, optimizer, RNG, step (atomic writes)
    final.pth    the student, loadable with `sam_model_registry[name](checkpoint=...)` and `load_sam`
    train.csv    step, lr, keep_ratio, loss terms, seconds per step
    eval.csv     held-out loss at fixed keep ratios
    tb/          the same curves for TensorBoard

The learning rate (warm-up, then cosine decay), the keep ratio of each step and the data order are pure
functions of the step number and the seed, so restoring the step restores the schedule and the data
position exactly.
"""

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from segment_anything.modeling import Sam
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .. import distributed
from ..build import build_model, build_student_from_sam, load_sam
from ..checkpoint import atomic_save, read_checkpoint, save_checkpoint
from ..errors import BiglSamError
from ..modeling.config import BigLittleConfig, config_from_dict, config_to_dict
from .cache import TeacherCache, remove_stale_temporaries
from .data import DistillDataset, valid_mask
from .losses import embedding_loss, mask_loss

STATE_FILE = "ckpt.pt"
FINAL_FILE = "final.pth"


@dataclass
class TrainConfig:
    student: str  # a registry name (bigl_b_t, ...) or a bigl-sam student checkpoint to continue from
    cache: str
    out: str
    init_from: Optional[str] = None  # SAM checkpoint for the P-path (e.g. sam_vit_b_01ec64.pth); None: random
    decoder_from: Optional[str] = None  # SAM checkpoint for prompt encoder + mask decoder (the teacher's)
    steps: int = 10000
    batch: int = 8  # per process; the global batch is batch x processes
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup: int = 500
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    keep_ratio_range: Tuple[float, float] = (0.15, 0.5)
    cosine_weight: float = 1.0
    mask_weight: float = 0.0  # > 0 adds the mask-level loss through the frozen decoder
    holdout: int = 8  # images kept out of training for the held-out curves
    eval_every: int = 500
    ckpt_every: int = 500
    seed: int = 0
    amp: str = "auto"  # "bf16", "none", or "auto" (bf16 on GPU)
    workers: int = 2
    device: Optional[str] = None
    resume: bool = False


# Fields that fix what a run computes; a resumed run must not change them.
RUN_IDENTITY = (
    "student", "cache", "steps", "batch", "lr", "min_lr", "warmup", "weight_decay", "grad_clip",
    "keep_ratio_range", "cosine_weight", "mask_weight", "holdout", "seed",
)


def train(cfg: TrainConfig) -> Path:
    """Trains the student; returns the path of the final checkpoint."""
    _check_config(cfg)
    process = distributed.start(cfg.device)
    try:
        return _train(cfg, process)
    finally:
        distributed.stop(process)


def _train(cfg: TrainConfig, process: distributed.Process) -> Path:
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)  # a random student init is the same on every process and every rerun
    cache = TeacherCache(cfg.cache)
    state = _load_state(out, cfg, process) if cfg.resume else _refuse_overwrite(out)
    model = _student_from_state(state) if state else build_student(cfg)
    _check_fits_cache(model, cache, cfg.cache)
    model.to(process.device)
    encoder = _trainable_encoder(model)
    trainer = DistributedDataParallel(encoder) if process.world_size > 1 else encoder
    optimizer = _optimizer(encoder, cfg)
    start_step = 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start_step = state["step"]
    check_images_exist(cache)
    train_items, heldout_items = split_holdout(cache, cfg.holdout)
    loader = _loader(cache, train_items, model, cfg, process, start_step)
    heldout = DistillDataset(cache, heldout_items, model.pixel_mean, model.pixel_std)
    log = RunLog(out, start_step) if process.is_main else None
    progress = tqdm(total=cfg.steps, initial=start_step, desc="distill", unit="step", disable=not process.is_main)
    autocast = _autocast(cfg, process.device)
    for step, batch in zip(range(start_step, cfg.steps), _batches(loader)):
        row = _train_step(model, trainer, optimizer, batch, step, cfg, process, autocast)
        done = step + 1
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}", r=f"{row['keep_ratio']:.2f}")
        if log:
            log.train(row)
            if done % cfg.eval_every == 0 or done == cfg.steps:
                log.eval(done, evaluate(model, heldout, cfg, autocast))
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            if process.is_main:
                save_training_state(out, model, optimizer, done, cfg)
            distributed.barrier(process)
    progress.close()
    _check_ranks_agree(encoder, process)
    if log:
        log.close()
    final = out / FINAL_FILE
    if process.is_main:
        save_checkpoint(model, final)
    distributed.barrier(process)
    return final


def _train_step(model, trainer, optimizer, batch: dict, step: int, cfg: TrainConfig, process, autocast) -> dict:
    """One optimizer step; returns its log row (losses averaged over processes)."""
    began = time.perf_counter()
    lr = learning_rate(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    ratio = keep_ratio_at(step, cfg)
    with autocast:
        losses = _losses(model, trainer, batch, ratio, cfg, _step_generator(cfg, step, process.rank))
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.image_encoder.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    row = {"step": step + 1, "lr": lr, "keep_ratio": ratio, **_mean_over_ranks(losses, process)}
    row["seconds"] = time.perf_counter() - began
    return row


def _check_config(cfg: TrainConfig) -> None:
    lo, hi = cfg.keep_ratio_range
    if not 0 < lo <= hi <= 1:
        raise BiglSamError(f"--keep-ratio-range {lo},{hi}: need 0 < low <= high <= 1")
    for name in ("steps", "batch", "eval_every", "ckpt_every"):
        if getattr(cfg, name) < 1:
            raise BiglSamError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.amp not in ("auto", "bf16", "none"):
        raise BiglSamError(f"--amp {cfg.amp}: expected bf16, none or auto")


def build_student(cfg: TrainConfig) -> Sam:
    """A fresh student from SAM checkpoints, or a saved student to continue distilling."""
    if Path(cfg.student).is_file():
        model = load_sam(cfg.student)
        if not isinstance(model.config, BigLittleConfig):
            raise BiglSamError(f"--student {cfg.student}: holds {model.config.name}, not a big.LITTLE student")
        return model
    return build_student_from_sam(cfg.student, cfg.init_from, cfg.decoder_from)


def _check_fits_cache(model: Sam, cache: TeacherCache, where: str) -> None:
    expected = tuple(cache.embedding(0).shape)
    vit = model.config.p_path
    grid = vit.img_size // vit.patch_size
    produced = (vit.out_chans, grid, grid)
    if vit.img_size != cache.img_size or produced != expected:
        raise BiglSamError(
            f"{where}: teacher embeddings are {expected} from {cache.img_size}px inputs; student "
            f"{model.config.name} makes {produced} from {vit.img_size}px"
        )


def _trainable_encoder(model: Sam) -> torch.nn.Module:
    """Only the image encoder learns; the prompt encoder and mask decoder stay the teacher's.

    The routers' biases stay fixed too: a softmax over tokens ignores a shift shared by all of them, so
    their gradient is rounding noise that Adam would blow up into a random walk.
    """
    for module in (model.prompt_encoder, model.mask_decoder):
        module.requires_grad_(False)
    for block in model.image_encoder.blocks:
        block.router.bias.requires_grad_(False)
    model.image_encoder.train()
    return model.image_encoder


def _optimizer(encoder: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and layer scales (the 1-D parameters)."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `lr` to `min_lr` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.lr - cfg.min_lr)


def keep_ratio_at(step: int, cfg: TrainConfig) -> float:
    """Uniform in `keep_ratio_range`, the same on every process, fixed by the seed and the step."""
    lo, hi = cfg.keep_ratio_range
    u = torch.rand(1, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)).item()
    return lo + (hi - lo) * u


def eval_keep_ratios(cfg: TrainConfig) -> List[float]:
    lo, hi = cfg.keep_ratio_range
    return sorted({lo, round((lo + hi) / 2, 4), hi})


def _step_generator(cfg: TrainConfig, step: int, rank: int) -> torch.Generator:
    """Randomness of one step on one process (mask-loss prompts)."""
    return torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1009 + rank + 1)


def split_holdout(cache: TeacherCache, holdout: int) -> Tuple[List[int], List[int]]:
    """Entry indexes for training and for the held-out curves: the last `holdout` images (all their
    augmentations) are held out."""
    image_ids = sorted({entry.image_id for entry in cache.entries})
    if holdout >= len(image_ids):
        raise BiglSamError(f"--holdout {holdout}: the cache has only {len(image_ids)} images")
    held = set(image_ids[len(image_ids) - holdout :]) if holdout else set()
    train_items = [i for i, e in enumerate(cache.entries) if e.image_id not in held]
    return train_items, [i for i, e in enumerate(cache.entries) if e.image_id in held]


def check_images_exist(cache: TeacherCache) -> None:
    """Fails before the first step, not hours in, when the images the cache was built from have moved."""
    missing = sorted({e.image_id for e in cache.entries if not (cache.images_root / e.image_id).is_file()})
    if missing:
        raise BiglSamError(
            f"{cache.images_root}: {len(missing)} images of the cache {cache.root} are missing, e.g. {missing[0]}"
        )


def _batches(loader: DataLoader):
    """The loader's batches; an error in a loader process comes back as its one-line message."""
    try:
        yield from loader
    except BiglSamError as err:
        last_line = str(err).strip().splitlines()[-1]
        raise BiglSamError(last_line.split("BiglSamError: ", 1)[-1]) from None


class StreamSampler(Sampler):
    """The data order. Epoch e is a permutation of the training items seeded by (seed, e); global step s
    takes the next `batch x world_size` positions of that endless stream, process r the r-th slice."""

    def __init__(self, size: int, batch: int, process: distributed.Process, seed: int, start: int, end: int):
        self.size, self.batch, self.process, self.seed = size, batch, process, seed
        self.start, self.end = start, end
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return (self.end - self.start) * self.batch

    def __iter__(self):
        per_step = self.batch * self.process.world_size
        for step in range(self.start, self.end):
            first = step * per_step + self.process.rank * self.batch
            for position in range(first, first + self.batch):
                yield self._at(position)

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._order[offset]


def _loader(
    cache: TeacherCache, items: List[int], model: Sam, cfg: TrainConfig, process: distributed.Process, start: int
) -> DataLoader:
    dataset = DistillDataset(cache, items, model.pixel_mean, model.pixel_std)
    sampler = StreamSampler(len(items), cfg.batch, process, cfg.seed, start, cfg.steps)
    return DataLoader(
        dataset,
        batch_size=cfg.batch,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=process.device.type == "cuda",
        persistent_workers=False,
    )


def _autocast(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _losses(
    model: Sam, encoder: torch.nn.Module, batch: dict, ratio: float, cfg: TrainConfig, generator: torch.Generator
) -> Dict[str, torch.Tensor]:
    device = model.pixel_mean.device
    images = batch["image"].to(device, non_blocking=True)
    teacher = batch["target"].to(device, non_blocking=True).float()
    valid_hw = batch["valid_hw"].to(device)
    student = encoder(images, keep_ratio=ratio).float()
    terms = embedding_loss(student, teacher, valid_mask(valid_hw, teacher.shape[-1], images.shape[-1]))
    terms["loss"] = terms["mse"] + cfg.cosine_weight * terms["cosine"]
    if cfg.mask_weight > 0:
        terms["mask"] = mask_loss(model, student, teacher, valid_hw, generator)
        terms["loss"] = terms["loss"] + cfg.mask_weight * terms["mask"]
    return terms


def _mean_over_ranks(losses: Dict[str, torch.Tensor], process: distributed.Process) -> Dict[str, float]:
    names = sorted(losses)
    values = torch.stack([losses[name].detach().float() for name in names])
    if process.world_size > 1:
        dist.all_reduce(values)
        values /= process.world_size
    return dict(zip(names, values.tolist()))


@torch.no_grad()
def evaluate(model: Sam, heldout: DistillDataset, cfg: TrainConfig, autocast) -> Dict[float, Dict[str, float]]:
    """Held-out MSE, 1 - cosine and their sum at each of `eval_keep_ratios`."""
    if len(heldout) == 0:
        return {}
    encoder = model.image_encoder
    encoder.eval()
    results = {}
    for ratio in eval_keep_ratios(cfg):
        sums: Dict[str, float] = {}
        for start in range(0, len(heldout), cfg.batch):
            samples = [heldout[i] for i in range(start, min(start + cfg.batch, len(heldout)))]
            batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
            with autocast:
                terms = _losses(model, encoder, batch, ratio, cfg, torch.Generator().manual_seed(cfg.seed))
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() * len(samples)
        results[ratio] = {name: total / len(heldout) for name, total in sums.items()}
    encoder.train()
    return results


def save_training_state(out: Path, model: Sam, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> Path:
    """Plain types and tensors only, so it reloads with `weights_only=True`."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    payload = {
        "step": step,
        "config": config_to_dict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "run": _identity(cfg),
    }
    return atomic_save(payload, out / STATE_FILE)


def _identity(cfg: TrainConfig) -> dict:
    data = asdict(cfg)
    return {name: list(data[name]) if isinstance(data[name], tuple) else data[name] for name in RUN_IDENTITY}


def _load_state(out: Path, cfg: TrainConfig, process: distributed.Process) -> Optional[dict]:
    path = out / STATE_FILE
    if process.is_main:
        remove_stale_temporaries(out)
    if not path.is_file():
        if process.is_main:
            print(f"{path}: no checkpoint yet, starting at step 0")
        return None
    state = read_checkpoint(path)
    changed = [f"{k}: {v!r} -> {_identity(cfg)[k]!r}" for k, v in state["run"].items() if _identity(cfg)[k] != v]
    if changed:
        raise BiglSamError(f"{path}: --resume with other settings than the run ({'; '.join(changed)})")
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def _refuse_overwrite(out: Path) -> None:
    if (out / STATE_FILE).is_file():
        raise BiglSamError(f"{out}: already holds a run ({STATE_FILE}); pass --resume, or use another --out")
    return None


def _student_from_state(state: dict) -> Sam:
    model = build_model(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model


def _check_ranks_agree(encoder: torch.nn.Module, process: distributed.Process) -> None:
    """DDP keeps the replicas equal; a cheap fingerprint check says so before anything is saved."""
    if process.world_size == 1:
        return
    fingerprint = torch.stack([p.detach().double().sum() for p in encoder.parameters()]).to(process.device)
    gathered = [torch.zeros_like(fingerprint) for _ in range(process.world_size)]
    dist.all_gather(gathered, fingerprint)
    if any(not torch.equal(gathered[0], other) for other in gathered[1:]):
        raise BiglSamError("processes disagree on the weights at the end of training")


class RunLog:
    """train.csv, eval.csv and TensorBoard. On resume, rows after the checkpoint's step are dropped, since
    those steps run again."""

    TRAIN_FIELDS = ("step", "lr", "keep_ratio", "loss", "mse", "cosine", "mask", "seconds")
    EVAL_FIELDS = ("step", "keep_ratio", "loss", "mse", "cosine", "mask")

    def __init__(self, out: Path, start_step: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._train = _CsvFile(out / "train.csv", self.TRAIN_FIELDS, start_step)
        self._eval = _CsvFile(out / "eval.csv", self.EVAL_FIELDS, start_step)
        self._board = SummaryWriter(str(out / "tb"), purge_step=start_step or None)

    def train(self, row: dict) -> None:
        self._train.write(row)
        for name in ("loss", "mse", "cosine", "mask", "lr", "keep_ratio", "seconds"):
            if name in row:
                self._board.add_scalar(f"train/{name}", row[name], row["step"])

    def eval(self, step: int, results: Dict[float, Dict[str, float]]) -> None:
        for ratio, terms in results.items():
            self._eval.write({"step": step, "keep_ratio": ratio, **terms})
            self._board.add_scalar(f"heldout/loss@keep{ratio:g}", terms["loss"], step)

    def close(self) -> None:
        self._train.close()
        self._eval.close()
        self._board.close()


class _CsvFile:
    def __init__(self, path: Path, columns, start_step: int) -> None:
        kept = []
        if start_step and path.is_file():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= start_step]
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._file.flush()

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
