"""What every job's report shares: the time split (load, encoder, decoder, scoring), the image counts, the
table cells, and results.json."""

import json
from pathlib import Path
from typing import Optional, Sequence

from ..fileio import atomic_write_text

RESULTS_FILE = "results.json"
TIME_PARTS = {"load": "load_s", "encoder": "encode_s", "decoder": "decode_s", "scoring": "score_s"}


def time_split(records: Sequence[dict]) -> dict:
    """Seconds in all over the scored records, and per part: reading the image, the encoder (with SAM's
    preprocessing), the mask decoder, and the rest of scoring (click simulator, IoU, RLE)."""
    parts = {part: sum(r.get(key, 0.0) for r in records) for part, key in TIME_PARTS.items()}
    seconds = sum(parts.values())
    share = {part: (value / seconds if seconds > 0 else None) for part, value in parts.items()}
    return {"seconds": seconds, "parts": parts, "share": share}


def time_split_cell(split: dict) -> str:
    """'5/80/12/3%': the shares of load, encoder, decoder and scoring."""
    if split["seconds"] <= 0:
        return "–"
    return "/".join(f"{100 * split['share'][part]:.0f}" for part in TIME_PARTS) + "%"


def image_counts(records: Sequence[dict], evaluated: Sequence[dict]) -> dict:
    """Of a model's records, the scored ones (`evaluated`) counted, the skipped ones listed with why, and the
    scored images that carry a non-upright EXIF tag counted."""
    return {
        "images": len(evaluated),
        "skipped_images": [{"file": r["file"], "reason": r["skipped"]} for r in records if "skipped" in r],
        "exif_rotated_images": sum("exif_orientation" in r for r in evaluated),
    }


def rate(count: int, seconds: float) -> Optional[float]:
    return count / seconds if seconds > 0 else None


def number_cell(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header, the rule under it, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_json(report: dict, out_dir: Path) -> Path:
    """`out_dir/results.json`, written atomically."""
    path = Path(out_dir) / RESULTS_FILE
    return atomic_write_text(path, json.dumps(report, indent=2) + "\n")
