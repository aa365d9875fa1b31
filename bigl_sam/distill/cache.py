"""The teacher-embedding cache: the teacher runs once per (image, augmentation), never during training.

Layout of a cache folder:
    settings.pt          what was cached: teacher, images folder, augmentations, shard size, the encoder's
                         input side in pixels (`img_size`), the teacher's precision
    shard-00000.pt       up to `shard_size` entries: "image_ids", "seeds" (N), "input_size" (N x 2, the
                         unpadded extent of the input in pixels), "embeddings" (N x 256 x 64 x 64 float16),
                         "skipped" ([image id, reason] of the planned entries whose image was unreadable)
    shard-00000.check.pt that shard's byte count and sha256, written once the shard is complete
    index.pt             all shards with their entries and checksums (what training reads), and "skipped"
    skipped.txt          the unreadable images, one "image id: reason" a line (absent when none)
Every file is written atomically and holds plain types and tensors only (it loads with weights_only=True).

Work is cut into shards by position in the sorted (image, augmentation) list, so a rerun skips every
shard already complete, and under `torchrun` process r computes shards r, r + W, r + 2W, ...
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import sys

import torch
from tqdm import tqdm

from .. import distributed
from ..checkpoint import atomic_save, read_checkpoint
from ..errors import BiglSamError
from ..fileio import atomic_write_text, remove_stale_temporaries
from ..images import image_files, load_image, sam_input
from ..weights import sha256_of
from .augment import augment, augmentation_seed

SETTINGS = "settings.pt"
INDEX = "index.pt"
SKIPPED = "skipped.txt"
OPEN_SHARDS = 8  # memory-mapped shards kept open by one reader


@dataclass(frozen=True)
class Entry:
    image_id: str  # path relative to the images folder
    seed: int  # augmentation seed (0: the original image)
    input_size: Tuple[int, int]  # extent of the image in the padded teacher input, in pixels


def list_images(root: Path) -> List[str]:
    """Image files under `root` (`images.image_files`, the whole tree), as sorted relative POSIX paths."""
    return [p.relative_to(root).as_posix() for p in image_files(root, "--images", recursive=True)]


def plan(image_ids: Sequence[str], augment_count: int) -> List[Tuple[str, int]]:
    """Every (image id, augmentation seed) to cache: the original plus `augment_count` augmentations."""
    return [(image_id, augmentation_seed(image_id, k)) for image_id in image_ids for k in range(augment_count + 1)]


def shard_path(root: Path, number: int) -> Path:
    return root / f"shard-{number:05d}.pt"


def check_path(shard: Path) -> Path:
    """Where a shard's size and checksum are recorded."""
    return shard.with_name(shard.stem + ".check.pt")


def build_cache(
    teacher: torch.nn.Module,
    images_root: Path,
    out: Path,
    augment_count: int = 0,
    shard_size: int = 64,
    batch_size: int = 4,
    device: Optional[str] = None,
    dtype: str = "float32",
    strict: bool = False,
) -> Path:
    """Runs `teacher` on every planned (image, augmentation) not cached yet; returns the index path.

    `dtype` "bfloat16" runs the teacher under bf16 autocast (embeddings are stored as float16 either way).
    An image that cannot be read is skipped, named on stderr and in skipped.txt; `strict` stops instead.
    """
    distributed.torch_dtype(dtype)  # an unknown name fails before any work
    process = distributed.start(device)
    if process.is_main:
        distributed.note_bfloat16(process.device, dtype)
    try:
        items = plan(list_images(images_root), augment_count)
        settings = {
            "teacher": teacher.config.name,
            "images": str(images_root.resolve()),
            "augment": augment_count,
            "shard_size": shard_size,
            "entries": len(items),
            "img_size": teacher.image_encoder.img_size,
            "dtype": dtype,
        }
        _check_settings(out, settings, process)
        shards = [items[start : start + shard_size] for start in range(0, len(items), shard_size)]
        todo = [n for n in range(process.rank, len(shards), process.world_size) if not _is_complete(out, n)]
        teacher = teacher.to(process.device).eval()
        precision = distributed.autocast(process.device, dtype)
        total = sum(len(shards[n]) for n in todo)
        with tqdm(total=total, desc=f"teacher (rank {process.rank})", unit="img") as progress:
            for number in todo:
                _write_shard(
                    teacher, images_root, shards[number], shard_path(out, number), batch_size, precision, strict, progress
                )
        distributed.barrier(process)
        if process.is_main:
            _write_index(out, len(shards))
        distributed.barrier(process)
        return out / INDEX
    finally:
        distributed.stop(process)


def _check_settings(out: Path, settings: dict, process: distributed.Process) -> None:
    """A rerun must cache the same thing as the first run; otherwise shards would mix two plans."""
    path = out / SETTINGS
    if path.is_file():
        found = read_checkpoint(path)
        changed = [f"{k}: {found.get(k)!r} -> {v!r}" for k, v in settings.items() if found.get(k) != v]
        if changed:
            raise BiglSamError(f"{out}: cache was built with other settings ({'; '.join(changed)}); use a new --out")
    elif process.is_main:
        atomic_save(settings, path)
    if process.is_main:
        remove_stale_temporaries(out)
    distributed.barrier(process)


@torch.no_grad()
def _write_shard(
    teacher: torch.nn.Module,
    images_root: Path,
    items: List[Tuple[str, int]],
    path: Path,
    batch_size: int,
    autocast: torch.autocast,
    strict: bool,
    progress,
) -> None:
    mean, std = teacher.pixel_mean.cpu(), teacher.pixel_std.cpu()
    img_size = teacher.image_encoder.img_size
    channels, grid = teacher.prompt_encoder.embed_dim, teacher.prompt_encoder.image_embedding_size
    embeddings = [torch.empty(0, channels, *grid, dtype=torch.float16)]
    done, input_sizes, skipped = [], [], {}
    for start in range(0, len(items), batch_size):
        inputs = []
        for image_id, seed in items[start : start + batch_size]:
            try:
                x, input_size = sam_input(augment(load_image(images_root / image_id), seed), mean, std, img_size)
            except BiglSamError as err:
                if strict:
                    raise
                if image_id not in skipped:
                    tqdm.write(f"skipped {image_id}: {err}", file=sys.stderr)
                skipped[image_id] = str(err)
                continue
            inputs.append(x)
            input_sizes.append(input_size)
            done.append((image_id, seed))
        if inputs:
            batch = torch.stack(inputs).to(next(teacher.parameters()).device)
            with autocast:
                embedding = teacher.image_encoder(batch)
            embeddings.append(embedding.to("cpu", torch.float16))
        progress.update(len(items[start : start + batch_size]))
    shard = {
        "image_ids": [image_id for image_id, _ in done],
        "seeds": torch.tensor([seed for _, seed in done], dtype=torch.int64),
        "input_size": torch.tensor(input_sizes, dtype=torch.int64).view(-1, 2),
        "embeddings": torch.cat(embeddings),
        "skipped": [[image_id, reason] for image_id, reason in skipped.items()],
    }
    atomic_save(shard, path)
    check = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path, progress=False)}
    atomic_save(check, check_path(path))


def _is_complete(out: Path, number: int) -> bool:
    """Complete: its checksum record exists and the file has the recorded size (a cheap truncation check)."""
    path = shard_path(out, number)
    record = check_path(path)
    if not (path.is_file() and record.is_file()):
        return False
    return read_checkpoint(record)["bytes"] == path.stat().st_size


def _write_index(out: Path, shard_count: int) -> None:
    shards, skipped = [], {}
    for number in range(shard_count):
        path = shard_path(out, number)
        shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        record = read_checkpoint(check_path(path))
        record["image_ids"] = shard["image_ids"]
        record["seeds"] = shard["seeds"].tolist()
        record["input_size"] = shard["input_size"].tolist()
        shards.append(record)
        skipped.update(dict(shard["skipped"]))
    if skipped:
        atomic_write_text(out / SKIPPED, "".join(f"{image_id}: {reason}\n" for image_id, reason in sorted(skipped.items())))
    else:
        (out / SKIPPED).unlink(missing_ok=True)
    index = {"settings": read_checkpoint(out / SETTINGS), "shards": shards, "skipped": sorted(skipped)}
    atomic_save(index, out / INDEX)


def verify_cache(out: Path) -> List[str]:
    """Problems found, one line each (empty: every shard is there, whole, and matches its checksum)."""
    index = read_index(out)
    problems = []
    for record in tqdm(index["shards"], desc="verify", unit="shard"):
        path = out / record["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != record["bytes"]:
            problems.append(f"{path}: truncated or grown, {path.stat().st_size} bytes instead of {record['bytes']}")
        elif sha256_of(path, progress=False) != record["sha256"]:
            problems.append(f"{path}: corrupt, sha256 differs from the index")
    return problems


def read_index(out: Path) -> dict:
    path = out / INDEX
    if not path.is_file():
        raise BiglSamError(f"{out}: no {INDEX}; not a teacher cache, or its build did not finish (rerun it)")
    return read_checkpoint(path)


class TeacherCache:
    """Read access to a finished cache: entries from the index, embeddings memory-mapped from the shards."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        index = read_index(self.root)
        self.settings = index["settings"]
        self.images_root = Path(self.settings["images"])
        self.img_size = self.settings["img_size"]
        self.entries: List[Entry] = []
        self._where: List[Tuple[str, int]] = []
        for record in index["shards"]:
            for row, (image_id, seed, input_size) in enumerate(
                zip(record["image_ids"], record["seeds"], record["input_size"])
            ):
                self.entries.append(Entry(image_id, seed, tuple(input_size)))
                self._where.append((record["file"], row))
        self._open: Dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, i: int) -> Entry:
        return self.entries[i]

    def embedding(self, i: int) -> torch.Tensor:
        """C x G x G float16 teacher embedding of entry i."""
        name, row = self._where[i]
        return self._shard(name)["embeddings"][row].clone()

    def _shard(self, name: str) -> dict:
        if name not in self._open:
            if len(self._open) >= OPEN_SHARDS:
                self._open.pop(next(iter(self._open)))
            path = self.root / name
            try:
                self._open[name] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except (OSError, RuntimeError) as err:
                raise BiglSamError(f"{path}: unreadable cache shard ({err}); run --verify") from None
        return self._open[name]
