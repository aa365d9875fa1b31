"""One rule for which weights a model runs with when no checkpoint is given; the demo, `eval` and
`bigl_sam.load_student` all follow it:

1. a student checkpoint for that registry key in the weights folder: `NAME.pth`, else the one `NAME*.pth` there
   (several, and no `NAME.pth`, are an error that lists them);
2. else SAM's official files (names and sizes from the manifest): a student's P-path from the file of its
   `sam_model_type` (`sam_vit_b_01ec64.pth` for `bigl_b_t`), its prompt encoder and mask decoder from the
   file of its `decoder_model_type` (`sam_vit_h_4b8939.pth`) if that is there, else from the same file;
   SAM's own models load their own file;
3. else random weights, said loudly, with why (nothing found, or a weights folder that is missing or no
   folder).

A student built from the official files has a random router and a zero E-path: at keep ratio 1.0 it is
exactly its SAM, below that it degrades until it is distilled. So it starts at keep ratio 1.0.
`sam_model_registry[model_type]()` is not affected: like SAM's own, it builds random weights. Nothing is
downloaded here.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from segment_anything.modeling import Sam

from .build import build_model, build_sam, build_student_from_sam
from .errors import BiglSamError
from .fingerprint import weights_fingerprint
from .modeling import get_config, is_student
from .modeling.config import check_keep_ratio, keep_ratio_of, sam_vit_config
from .weights import KnownCheckpoint, check_size, folder_line, folder_problem, read_manifest, weights_dir

PathLike = Union[str, Path]
CHECKPOINT, OFFICIAL, RANDOM = "checkpoint", "official", "random"
UNTRAINED_ROUTER_KEEP_RATIO = 1.0  # where a student fresh from SAM's files is exactly that SAM
RANDOM_WEIGHTS_SEED = 0  # every process and every rerun builds the same random model


@dataclass(frozen=True)
class WeightsChoice:
    """What `choose_weights` found for one registry key.

    kind: CHECKPOINT (files: the checkpoint), OFFICIAL (files: P-path file, then prompt encoder/decoder file;
    for SAM's own models just its file) or RANDOM (files: none; `wanted`: the official files that would
    give real weights; `folder_problem`: why the folder could not be searched, if that is why).
    """

    model_type: str
    kind: str
    folder: Path
    files: Tuple[Path, ...] = ()
    wanted: Tuple[str, ...] = ()
    folder_problem: Optional[str] = None
    searched: bool = True  # False when a checkpoint was given: the folder was not looked at

    @property
    def random(self) -> bool:
        return self.kind == RANDOM

    @property
    def untrained_router(self) -> bool:
        """A student built from SAM's files: exactly SAM at keep 1.0, untrained below."""
        return self.kind == OFFICIAL and is_student(get_config(self.model_type))

    def describe(self) -> str:
        """One line: which of the three the rule took, and from which files."""
        if self.kind == CHECKPOINT:
            return f"{self.model_type}: weights from {self.files[0]}"
        if self.kind == OFFICIAL and not self.untrained_router:
            return f"{self.model_type}: SAM's official weights from {self.files[0]}"
        if self.kind == OFFICIAL:
            encoder, decoder = self.files
            return (
                f"{self.model_type}: built from SAM's official files (P-path {encoder}, prompt encoder and mask "
                f"decoder {decoder}); untrained router: at keep ratio 1.0, its default, it is exactly SAM "
                f"{sam_vit_label(self.model_type)}"
            )
        student_files = [f"{self.model_type}*.pth"] if is_student(get_config(self.model_type)) else []
        looked_for = ", ".join(student_files + list(self.wanted))
        if not looked_for:
            return (f"{self.model_type}: RANDOM WEIGHTS (no checkpoint given, and the manifest names no official "
                    "file for it)")
        if self.folder_problem:
            where = f"weights folder {self.folder} {self.folder_problem}"
            return f"{self.model_type}: RANDOM WEIGHTS ({where}; looked for {looked_for})"
        return f"{self.model_type}: RANDOM WEIGHTS (none of {looked_for} in {self.folder})"


def folder_lines(choices: Sequence[WeightsChoice]) -> List[str]:
    """The line a command prints about the weights folder, before its `WeightsChoice.describe` lines: the
    folder the rule searched, once, when it looked there for any of `choices` (none when each had a checkpoint)."""
    return [folder_line(folder) for folder in sorted({choice.folder for choice in choices if choice.searched})]


def weights_lines(choices: Sequence[WeightsChoice]) -> str:
    """What a command prints about the weights of its models: `folder_lines`, then one line per model."""
    return "\n".join(folder_lines(choices) + [choice.describe() for choice in choices])


def sam_vit_label(model_type: str) -> str:
    """ "ViT-B" for bigl_b_t (its P-path's SAM), "ViT-H" for vit_h."""
    config = get_config(model_type)
    return "ViT-" + sam_vit_config(config).name.split("_", 1)[1].upper()


def choose_weights(
    model_type: str,
    checkpoint: Optional[PathLike] = None,
    folder: Optional[PathLike] = None,
    manifest: Optional[PathLike] = None,
) -> WeightsChoice:
    """The rule (module docstring), applied to the files in `folder` (default: `weights.weights_dir()`);
    an explicit `checkpoint` always wins. Reads no weights; an official file of the wrong size, and several
    student files without the exact name, are errors."""
    config = get_config(model_type)
    folder = weights_dir(None if folder is None else Path(folder))
    if checkpoint is not None:
        return WeightsChoice(model_type, CHECKPOINT, folder, (Path(checkpoint),), searched=False)
    student = is_student(config)
    problem = folder_problem(folder)
    student_file = _student_file(model_type, folder) if student and problem is None else None
    if student_file is not None:
        return WeightsChoice(model_type, CHECKPOINT, folder, (student_file,))
    known = read_manifest(None if manifest is None else Path(manifest))
    encoder_entry = _official_entry(known, sam_vit_config(config).name)
    decoder_entry = _official_entry(known, config.decoder_model_type) if student else None
    wanted = tuple(dict.fromkeys(e.name for e in (encoder_entry, decoder_entry) if e is not None))
    encoder_file = None if problem else _present(encoder_entry, folder)
    if encoder_file is None:
        return WeightsChoice(model_type, RANDOM, folder, wanted=wanted, folder_problem=problem)
    if not student:
        return WeightsChoice(model_type, OFFICIAL, folder, (encoder_file,))
    decoder_file = _present(decoder_entry, folder) or encoder_file
    return WeightsChoice(model_type, OFFICIAL, folder, (encoder_file, decoder_file))


def _student_file(model_type: str, folder: Path) -> Optional[Path]:
    """`NAME.pth` in `folder`, else the one `NAME*.pth` there (NAME: `model_type`; None if there is none)."""
    exact = folder / f"{model_type}.pth"
    if exact.is_file():
        return exact
    found = sorted(p for p in folder.glob(f"{model_type}*.pth") if p.is_file())
    if len(found) > 1:
        raise BiglSamError(f"{model_type}: {len(found)} student checkpoints in {folder} and none named "
                           f"{model_type}.pth ({', '.join(p.name for p in found)}); rename the one to use to "
                           f"{model_type}.pth, or give it "
                           f"as the checkpoint")
    return found[0] if found else None


def _official_entry(known: Dict[str, KnownCheckpoint], model_type: str) -> Optional[KnownCheckpoint]:
    return next((entry for entry in known.values() if entry.model == model_type), None)


def _present(entry: Optional[KnownCheckpoint], folder: Path) -> Optional[Path]:
    """The entry's file in `folder` if it is there (checked against the manifest's size), else None."""
    if entry is None or not (folder / entry.name).is_file():
        return None
    check_size(entry, folder / entry.name)
    return folder / entry.name


def load_chosen(choice: WeightsChoice) -> Sam:
    """The model `choice` names, in eval mode, with `model.weights_source = choice`."""
    if choice.kind == CHECKPOINT:
        model = build_sam(choice.model_type, choice.files[0])
    elif choice.untrained_router:
        model = build_student_from_sam(choice.model_type, *choice.files)
        model.image_encoder.keep_ratio = UNTRAINED_ROUTER_KEEP_RATIO
    elif choice.kind == OFFICIAL:
        model = build_sam(choice.model_type, choice.files[0])
    else:
        model = build_model(get_config(choice.model_type))
    model.weights_source = choice
    return model.eval()


@dataclass(frozen=True)
class ModelSpec:
    """A registry key (`model_type`), its weights (as `choose_weights` found them) and the keep ratio asked for
    students (None: the one the model loads with)."""

    model_type: str
    weights: WeightsChoice
    keep_ratio: Optional[float] = None

    def __post_init__(self) -> None:
        get_config(self.model_type)
        if self.keep_ratio is not None:
            check_keep_ratio(self.keep_ratio, "--keep-ratio")

    @property
    def random_weights(self) -> bool:
        return self.weights.random

    def settings(self, model: Sam) -> dict:
        """What identifies this model's results: name, the content of its weights files (sha256, so a file
        replaced under the same name starts another run) and the keep ratio it runs at. Called after
        `load`, which has checked that the files exist."""
        fingerprints = [weights_fingerprint(path) for path in self.weights.files]
        return {"model": self.model_type, "weights_sha256": fingerprints or None, "keep_ratio": keep_ratio_of(model)}

    def load(self, device: torch.device) -> Sam:
        if self.random_weights:
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = load_chosen(self.weights)
        if self.keep_ratio is not None and keep_ratio_of(model) is not None:
            model.image_encoder.keep_ratio = self.keep_ratio
        return model.to(device).eval()


def load_student(model_type: str, weights_dir: Optional[PathLike] = None, manifest: Optional[PathLike] = None) -> Sam:
    """A big.LITTLE student by the rule: its checkpoint in the weights folder, else built from SAM's official
    files there (keep ratio 1.0: exactly SAM), else random weights (with a warning).
    `model.weights_source.describe()` says which, and from which files."""
    if not is_student(get_config(model_type)):
        raise BiglSamError(f"{model_type} is SAM's own model, not a student; "
                           f"use sam_model_registry[{model_type!r}](checkpoint)")
    choice = choose_weights(model_type, folder=weights_dir, manifest=manifest)
    if choice.random:
        warnings.warn(choice.describe(), stacklevel=2)
    return load_chosen(choice)
