"""What export.json says about the files beside it, and the check that they are those files.

The exporter gives each export a random id, stored in the metadata of encoder.onnx and of decoder.onnx and
in export.json, and records each file's size and sha256. `OnnxPredictor.from_folder` checks, before it
runs anything, that export.json lists both models, that every file it lists has the recorded size, and
that both models carry its id: an encoder of one export beside a decoder of another, or an export.json of
a third, is refused. Reading the ids and sizes costs nothing; the sha256 is not recomputed at load (a
ViT-H encoder is 2.5 GB; a deployment that wants it compares `sha256sum` with export.json).

Needs no torch: the predictor imports it.
"""

import json
from pathlib import Path
from typing import Dict

from ..errors import BiglSamError
from ..fileio import folder_leftovers
from .interface import DECODER_FILE, ENCODER_FILE, MANIFEST_FILE

REEXPORT = "export the model again (`bigl-sam export onnx`)"


def file_records(folder: Path) -> Dict[str, dict]:
    """{name: {"bytes", "sha256"}} of every file in `folder` (the models and their external weights)."""
    from ..weights import sha256_of

    return {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path, progress=False)}
        for path in sorted(folder.iterdir())
        if path.name != MANIFEST_FILE
    }


def read_manifest(folder: Path) -> dict:
    """export.json of `folder` once it is checked against the files beside it (sizes, both models listed);
    one `BiglSamError` line naming what does not match."""
    if not folder.is_dir():
        old = folder_leftovers(Path(folder).absolute())["old"]
        if old.is_dir():
            raise BiglSamError(f"{folder}: not found; an export to it was killed while swapping folders: the previous "
                               f"export is in {old}, and the next export to {folder} puts it back first")
        raise BiglSamError(f"{folder}: export folder not found")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BiglSamError(f"{path}: not found; from_folder takes a folder that `bigl-sam export onnx` wrote "
                           f"(OnnxPredictor(encoder, decoder) takes models of your own)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BiglSamError(f"{path}: not readable JSON ({err})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    described = isinstance(files, dict) and isinstance(manifest.get("export_id"), str) and all(
        isinstance(record, dict) and isinstance(record.get("bytes"), int) for record in files.values()
    )
    if not (described and {ENCODER_FILE, DECODER_FILE} <= set(files)):
        raise BiglSamError(f"{path}: does not list {ENCODER_FILE} and {DECODER_FILE} with their sizes and the "
                           f"export's id (written by an older bigl-sam, or edited); {REEXPORT}")
    for name, record in files.items():
        file = folder / name
        if Path(name).name != name or not file.is_file():
            raise BiglSamError(f"{file}: missing; {MANIFEST_FILE} lists it; {REEXPORT}")
        size = file.stat().st_size
        if size != record["bytes"]:
            raise BiglSamError(f"{file}: {size} bytes, {MANIFEST_FILE} records {record['bytes']} (another export's "
                               f"file, or truncated); {REEXPORT}")
    return manifest


def check_export_ids(encoder_id, decoder_id, encoder: Path, decoder: Path, manifest_id=None) -> None:
    """The export ids read from encoder.onnx and decoder.onnx (None: a model written without one) must be
    equal, and equal to export.json's (`manifest_id`, None without export.json)."""
    if encoder_id is not None and decoder_id is not None and encoder_id != decoder_id:
        raise BiglSamError(f"{encoder} and {decoder} come from two different exports (ids {encoder_id} and "
                           f"{decoder_id}); use the two files of one export")
    if manifest_id is not None:
        for path, found in ((encoder, encoder_id), (decoder, decoder_id)):
            if found != manifest_id:
                raise BiglSamError(f"{path}: not the file {MANIFEST_FILE} describes (export id {found}, "
                                   f"{MANIFEST_FILE} has {manifest_id}); {REEXPORT}")
