"""The export record (export.json): what it says about the files beside it, and the check that they are those
files.

The exporter gives each export a random id, stored in the metadata of encoder.onnx and of decoder.onnx and
in export.json, and records each file's size and sha256. `OnnxPredictor.from_folder` checks, before it
runs anything, that export.json lists both models, that every file it lists has the recorded size, and
that both models carry its id: an encoder of one export beside a decoder of another, or an export.json of
a third, is refused. Reading the ids and sizes costs nothing; the sha256 is not recomputed at load (a
ViT-H encoder is 2.5 GB): `bigl-sam export onnx --check` recomputes it.

Needs no torch: the predictor imports it.
"""

import json
from pathlib import Path
from typing import Dict

from ..errors import BiglSamError
from ..fileio import folder_leftovers
from ..weights import sha256_of
from .interface import ANYLABELING_CONFIG_FILE, DECODER_FILE, ENCODER_FILE, EXPORT_ID_KEY, RECORD_FILE

REEXPORT = "export the model again (`bigl-sam export onnx`)"


def file_records(folder: Path) -> Dict[str, dict]:
    """{name: {"bytes", "sha256"}} of every file in `folder` (the models and their external weights)."""
    return {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_of(path, progress=False)}
        for path in sorted(folder.iterdir())
        if path.name != RECORD_FILE
    }


def read_export_record(folder: Path, hashes: bool = False) -> dict:
    """The export record (export.json) of `folder` once it is checked against the files beside it (sizes,
    both models listed; with `hashes`, as `--check` does, each model file's sha256 too); one `BiglSamError`
    line naming what does not match. config.yaml, which users may edit, is checked by its values where it is
    read (`anylabeling.open_anylabeling`), not here."""
    if folder.is_file():
        hint = f"the folder that holds it ({folder.parent})" if folder.name == RECORD_FILE else "the folder"
        raise BiglSamError(f"{folder}: is a file, not an export folder; give {hint} `bigl-sam export onnx` wrote")
    if not folder.is_dir():
        old = folder_leftovers(Path(folder).absolute())["old"]
        if old.is_dir():
            raise BiglSamError(f"{folder}: not found; an export to it was killed while swapping folders: the previous "
                               f"export is in {old}, and the next export to {folder} puts it back first")
        raise BiglSamError(f"{folder}: export folder not found")
    path = folder / RECORD_FILE
    if not path.is_file():
        raise BiglSamError(f"{path}: not found; from_folder takes a folder that `bigl-sam export onnx` wrote "
                           f"(OnnxPredictor(encoder, decoder) takes models of your own)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BiglSamError(f"{path}: not readable JSON ({err})") from None
    files = record.get("files") if isinstance(record, dict) else None
    described = isinstance(files, dict) and isinstance(record.get("export_id"), str) and all(
        isinstance(entry, dict) and isinstance(entry.get("bytes"), int) for entry in files.values()
    )
    if not (described and {ENCODER_FILE, DECODER_FILE} <= set(files)):
        raise BiglSamError(f"{path}: does not list {ENCODER_FILE} and {DECODER_FILE} with their sizes and the "
                           f"export's id (written by an older bigl-sam, or edited); {REEXPORT}")
    for name, entry in files.items():
        file = folder / name
        if Path(name).name != name or not file.is_file():
            raise BiglSamError(f"{file}: missing; {RECORD_FILE} lists it; {REEXPORT}")
        if name == ANYLABELING_CONFIG_FILE:
            continue
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BiglSamError(f"{file}: {size} bytes, {RECORD_FILE} records {entry['bytes']} (another export's "
                               f"file, or truncated); {REEXPORT}")
        if hashes and sha256_of(file, progress=False) != entry.get("sha256"):
            raise BiglSamError(f"{file}: its sha256 differs from the one {RECORD_FILE} records (the file changed "
                               f"since the export); {REEXPORT}")
    return record


def check_export_ids(encoder_session, decoder_session, encoder: Path, decoder: Path, record_id=None) -> None:
    """The export ids in the metadata of the encoder's and the decoder's onnxruntime sessions (files `encoder`
    and `decoder`; a model written without one has None) must be equal, and equal to the export record's
    (`record_id`, None without export.json)."""
    encoder_id, decoder_id = (session.get_modelmeta().custom_metadata_map.get(EXPORT_ID_KEY)
                              for session in (encoder_session, decoder_session))
    if encoder_id is not None and decoder_id is not None and encoder_id != decoder_id:
        raise BiglSamError(f"{encoder} and {decoder} come from two different exports (ids {encoder_id} and "
                           f"{decoder_id}); use the two files of one export")
    if record_id is not None:
        for path, found in ((encoder, encoder_id), (decoder, decoder_id)):
            if found != record_id:
                raise BiglSamError(f"{path}: not the file {RECORD_FILE} describes (export id {found}, "
                                   f"{RECORD_FILE} has {record_id}); {REEXPORT}")
