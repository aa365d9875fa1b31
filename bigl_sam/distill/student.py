"""The student of a run: built fresh from SAM checkpoints, or a saved student to keep distilling; and
which of its parameters learn."""

from pathlib import Path
from typing import Callable, Optional

import torch
from segment_anything.modeling import Sam

from ..build import build_model, build_student_from_sam, load_sam, part_of
from ..checkpoint import ModelWeights, load_state_dict_into, read_model
from ..errors import BiglSamError
from ..training.optimizer import freeze_router_biases
from ..modeling.config import BIGL_CONFIGS, SamVitConfig, get_config, is_student, students_of


def build_student(
    student: str,
    encoder_checkpoint: Optional[str],
    decoder_checkpoint: Optional[str],
    seed: int,
    read: Callable[[str], ModelWeights] = read_model,
) -> Sam:
    """`student` a registry name: a fresh student, P-path from the SAM file `encoder_checkpoint` (None:
    random), prompt encoder and mask decoder from the SAM file `decoder_checkpoint`, router and E-path drawn
    from `seed` (the same on every process, in every rerun, and in `distill compare`); the registry name of
    a SAM ViT: a dense student (MobileSAM's decoupled distillation), its encoder drawn from `seed`, prompt
    encoder and mask decoder from `decoder_checkpoint`; or a bigl-sam student checkpoint to continue
    distilling.
    `read` reads the SAM files (a `checkpoint.ModelReader` reads a file named twice once)."""
    if Path(student).is_file():
        model = load_sam(student)
        if not is_student(model):
            raise BiglSamError(f"--student {student}: holds {model.config.name}, not a big.LITTLE student")
        return model
    torch.manual_seed(seed)
    decoder = read(decoder_checkpoint) if decoder_checkpoint else None
    if not is_student(get_config(student)):
        return dense_student(student, decoder)
    encoder = read(encoder_checkpoint) if encoder_checkpoint else None
    return build_student_from_sam(student, encoder, decoder)


def dense_student(model_type: str, decoder: Optional[ModelWeights]) -> Sam:
    """A SAM ViT `model_type` with random encoder weights (from the global generator), the prompt encoder and
    mask decoder of `decoder` (a SAM file read already; None: random too)."""
    model = build_model(get_config(model_type))
    if decoder is not None:
        for module in ("prompt_encoder", "mask_decoder"):
            load_state_dict_into(getattr(model, module), part_of(decoder, module), decoder.source)
    return model


def student_for(sam: SamVitConfig, source: str) -> str:
    """The student registered for a SAM ViT's size (its P-path starts as that ViT); of several, the one
    with the narrowest E-path (for ViT-H the lean `bigl_h_s`, which the README says to train first)."""
    fits = [(BIGL_CONFIGS[name].little_dim, name) for name in students_of(sam)]
    if not fits:
        raise BiglSamError(f"{source}: no student config starts from a SAM {sam.name}; name one with --student")
    return min(fits)[1]


def trainable_encoder(model: Sam, freeze_source: bool = False) -> torch.nn.Module:
    """Only the image encoder learns; the prompt encoder and mask decoder stay the teacher's. With
    `freeze_source` only the parts a fresh student adds learn (routers and E-paths): the P-path, the patch
    and position embeddings and the neck keep the weights the student started from: at keep ratio 1.0 the
    student is its source SAM plus the E-paths' learned updates (and exactly the source with them zeroed).

    The routers' biases stay fixed too (`training.optimizer.freeze_router_biases`).
    """
    for module in (model.prompt_encoder, model.mask_decoder):
        module.requires_grad_(False)
    encoder = model.image_encoder
    if freeze_source:
        encoder.requires_grad_(False)
        for block in encoder.blocks:
            block.router.requires_grad_(True)
            block.little.requires_grad_(True)
    if is_student(encoder):
        freeze_router_biases(encoder)
    encoder.train()
    return encoder
