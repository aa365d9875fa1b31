"""Per-image results on disk: append-only JSON lines, one file per process, so a crash loses at most the
image in flight and a rerun skips what is done."""

import hashlib
import json
import os
from pathlib import Path
from typing import Dict

from ..errors import BiglSamError
from ..fileio import atomic_write_text

SETTINGS_FILE = "settings.json"


def run_directory(out_dir: Path, model_name: str, settings: dict) -> Path:
    """`out_dir/runs/<model>-<hash of settings>`: the same model, weights and protocol resume the same run;
    anything else starts its own. The settings are written next to the records for the record."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = Path(out_dir) / "runs" / f"{model_name}-{digest}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BiglSamError(f"{out_dir}: cannot write results there ({err.strerror})") from None
    settings_path = run_dir / SETTINGS_FILE
    if not settings_path.exists():
        atomic_write_text(settings_path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return run_dir


class RecordLog:
    """The records of one run; process `rank` appends to `part-<rank>.jsonl`."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / f"part-{rank}.jsonl"

    def read(self) -> Dict[int, dict]:
        """image id -> its latest record, over every process's file. A line cut short by a crash is ignored
        (that image is simply done again)."""
        records: Dict[int, dict] = {}
        for part in sorted(self.run_dir.glob("part-*.jsonl")):
            for line in part.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                records[int(record["image_id"])] = record
        return records

    def append(self, record: dict) -> None:
        """Writes one record durably before the next image starts."""
        with open(self.path, "ab+") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # after a line torn by a crash, start a fresh one
            f.write((json.dumps(record) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
