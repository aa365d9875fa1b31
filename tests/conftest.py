"""Shared fixtures: random models of the real architectures, saved the way the real files are."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bigl_sam import build_model, distributed, save_checkpoint
from bigl_sam.modeling import get_config


@pytest.fixture(scope="session", autouse=True)
def empty_weights_dir(tmp_path_factory):
    """Every test sees an empty default weights folder, never the user's own files."""
    folder = tmp_path_factory.mktemp("no-weights")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIGL_SAM_WEIGHTS", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def small_matmul_reference(monkeypatch):
    """bench's matmul reference at a tiny size in tests: where bfloat16 is emulated, the real one takes
    seconds per call."""
    monkeypatch.setattr("bigl_sam.bench.measure.REFERENCE_MATMUL", (64, 64, 64))


@contextmanager
def dynamo_only_compile():
    """`torch.compile` with dynamo's "eager" backend inside the block: the same graph capture, guards and
    recompiles as with inductor, without inductor's code generation (one to two minutes for SAM's mask
    decoder on a loaded 2-core CPU). What inductor makes of the graph is timed by `bigl-sam bench` and
    checked against SAM's masks by `bigl-sam amg --bench --compile`."""
    real = torch.compile
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", lambda model=None, **kwargs: real(model, **{**kwargs, "backend": "eager"}))
        yield


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturbs every parameter (SAM zero-initialises the position terms, which would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return model


def tie_every_score_(model):
    """Zeroes every router's weights: all tokens of an image score alike, in every layer and on any image
    (as every token of a flat image does where the position embedding is zero, as SAM initialises it), so
    which tokens take the P-path is decided by the order among equal scores alone."""
    for block in model.image_encoder.blocks:
        block.router.weight.data.zero_()
    return model


def seeded_model(name: str, seed: int) -> torch.nn.Module:
    """The random model `name` of `seed` alone: the same weights whichever tests ran before (the global
    generator that builds it is seeded apart and left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return randomize_(build_model(get_config(name)), seed)


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory):
    """official_checkpoint(name) -> path of a random SAM `name` saved as a flat state dict, like
    sam_vit_b_01ec64.pth. Cached for the session."""
    made = {}

    def make(name: str, seed: int = 0) -> Path:
        if (name, seed) not in made:
            path = tmp_path_factory.mktemp("official") / f"sam_{name}_seed{seed}.pth"
            torch.save(seeded_model(name, seed).state_dict(), path)
            made[name, seed] = path
        return made[name, seed]

    return make


@pytest.fixture(scope="session")
def student_checkpoint(tmp_path_factory):
    """student_checkpoint(name) -> path of a random bigl-sam student checkpoint (with its config)."""
    made = {}

    def make(name: str = "bigl_test", seed: int = 0) -> Path:
        if (name, seed) not in made:
            path = tmp_path_factory.mktemp("student") / f"{name}_seed{seed}.pth"
            save_checkpoint(seeded_model(name, seed), path)
            made[name, seed] = path
        return made[name, seed]

    return make


def run_torchrun(cli_args, processes: int = 2):
    """`torchrun --standalone --nproc_per_node N -m bigl_sam.cli ARGS` on CPU; the finished process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "bigl_sam.cli", *map(str, cli_args)]
    return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=300)


def as_ranks(monkeypatch, command, world_size: int = 2) -> dict:
    """{rank: command()}, `command` run once per rank of a `world_size`-process torchrun, in this process and
    the last rank first: `distributed.start` gives that rank, barriers pass at once, and rank 0's k-th gather
    gets the k-th thing each other rank sent. A command's own sharding, without the start-up of torchrun's
    processes (about 25 s a test on a loaded 2-core machine); the real process group has its own test
    (test_embed's torchrun test)."""
    sent = {rank: [] for rank in range(1, world_size)}
    running = {}

    def gather_object(obj, object_gather_list=None, dst=0):
        if running["rank"] != dst:
            sent[running["rank"]].append(obj)
        else:
            object_gather_list[:] = [obj] + [sent[rank].pop(0) for rank in range(1, world_size)]

    monkeypatch.setattr(torch.distributed, "gather_object", gather_object)
    monkeypatch.setattr(torch.distributed, "barrier", lambda *args, **kwargs: None)
    results = {}
    for rank in reversed(range(world_size)):
        running["rank"] = rank
        monkeypatch.setattr(distributed, "start", lambda device=None, backend=None, rank=rank: distributed.Process(
            rank, world_size, distributed.pick_device(device)))
        results[rank] = command()
    assert not any(sent.values()), "rank 0 gathered less than the other ranks sent"
    return results


def official_weights_folder(folder: Path, files: dict) -> Path:
    """Puts `files` ({official file name: (model, source path)}) into `folder` as hard links and writes a
    manifest of them (their real sizes) to `folder/manifest.json`; returns the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (model, source) in files.items():
        target = folder / name
        if not target.exists():
            os.link(source, target)
        entries.append({"name": name, "model": model, "url": f"https://example.invalid/{name}",
                        "bytes": target.stat().st_size, "sha256": "0" * 64})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"checkpoints": entries}))
    return manifest


SMALL_IMG_SIZE = 256  # 16 x 16 embedding grid: distillation steps well under a second on a 2-core CPU


def small_test_configs():
    """256 px variants of the tiny test architectures: (SAM ViT, big.LITTLE student of that ViT)."""
    sam = dataclasses.replace(get_config("vit_test"), name="vit_test_256", img_size=SMALL_IMG_SIZE)
    return sam, dataclasses.replace(get_config("bigl_test"), name="bigl_test_256", p_path=sam)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: frugal on a shared CPU, and bit-reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows_of(path) -> list:
    """The rows of a CSV log (train.csv, eval.csv) as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def photo_like(seed: int) -> np.ndarray:
    """A 375 x 500 RGB uint8 image that looks like a photo to SAM: a textured background, a red disc and a
    blue square."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.normal(120, 25, (375, 500, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 50, 220, 200), fill=(220, 40, 40))
    draw.rectangle((280, 150, 460, 330), fill=(30, 60, 200))
    return np.asarray(image)
