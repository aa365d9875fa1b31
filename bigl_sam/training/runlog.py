"""The curves of a training run: train.csv, eval.csv and TensorBoard (RUN/tb).

On resume, rows after the checkpoint's step are dropped, since those steps run again. A full disk while
logging is the same one-line error as anywhere else (`fileio.writing`).
"""

import csv
import math
from pathlib import Path
from typing import Dict, Sequence

from torch.utils.tensorboard import SummaryWriter

from ..fileio import writing


class RunLog:
    """`train_fields`: the columns of train.csv (`step` first); each numeric one is also a TensorBoard curve
    `train/NAME`. `eval_fields`: the columns of eval.csv."""

    def __init__(self, out: Path, start_step: int, train_fields: Sequence[str], eval_fields: Sequence[str]) -> None:
        self._board_terms = [name for name in train_fields if name != "step"]
        with writing(out / "train.csv"):
            out.mkdir(parents=True, exist_ok=True)
            self._train = CsvLog(out / "train.csv", train_fields, start_step)
            self._eval = CsvLog(out / "eval.csv", eval_fields, start_step)
        self._board_dir = out / "tb"
        with writing(self._board_dir / "events"):
            self._board = SummaryWriter(str(self._board_dir), purge_step=start_step or None)

    def train(self, row: dict) -> None:
        self._train.write(row)
        self._scalars({f"train/{name}": row[name] for name in self._board_terms if name in row}, row["step"])

    def eval(self, step: int, rows: Sequence[dict], curves: Dict[str, float]) -> None:
        """`rows` (each with `step`) go to eval.csv, `curves` ({tag: value}) to TensorBoard at `step`."""
        for row in rows:
            self._eval.write(row)
        self._scalars(curves, step)

    def _scalars(self, values: Dict[str, float], step: int) -> None:
        with writing(self._board_dir / "events"):
            for tag, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._board.add_scalar(tag, value, step)

    def close(self) -> None:
        self._train.close()
        self._eval.close()
        with writing(self._board_dir / "events"):
            self._board.close()


class CsvLog:
    """A CSV file appended to row by row (flushed each row), rewritten with the kept rows on resume."""

    def __init__(self, path: Path, columns, start_step: int) -> None:
        self.path = path
        kept = []
        if start_step and path.is_file():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= start_step]
        with writing(path):
            self._file = open(path, "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
            self._writer.writeheader()
            self._writer.writerows(kept)
            self._file.flush()

    def write(self, row: dict) -> None:
        with writing(self.path):
            self._writer.writerow(row)
            self._file.flush()

    def close(self) -> None:
        with writing(self.path):
            self._file.close()
