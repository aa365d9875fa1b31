"""The study's two plots from a small file of measured points: mIoU against distillation steps (several
rows), and mIoU against keep ratio (0.1 to 1.0).

A points file is CSV with the header `row,x,miou[,low,high]`, or JSON: a list of objects with those keys
(or an object with the list under "points"). `miou`, `low`, `high`: mIoU x100 and its interval (as
`bootstrap.paired_intervals` gives); `x`: the steps, or the keep ratio. One line per `row`, in the order
rows first appear, its points sorted by x.
"""

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence

from ..errors import BiglSamError
from ..evaluation.plot import Line, plot_lines
from ..fileio import atomic_write_text

POINT_FIELDS = ("row", "x", "miou", "low", "high")
KEEP_RATIO_TICKS = tuple(k / 10 for k in range(1, 11))
MAX_TICKS = 8


def read_points(path: Path) -> List[dict]:
    """The points of a CSV or JSON points file, each {row, x, miou} and, if given, {low, high}."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise BiglSamError(f"{path}: cannot read the points file ({err.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BiglSamError(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
        raw = data.get("points") if isinstance(data, dict) else data
        if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
            raise BiglSamError(f"{path}: expected a list of points (objects with row, x, miou)")
    else:
        raw = list(csv.DictReader(text.splitlines()))
    points = [_point(p, path, n) for n, p in enumerate(raw, start=1)]
    if not points:
        raise BiglSamError(f"{path}: no points")
    return points


def _point(raw: dict, path: Path, n: int) -> dict:
    missing = [key for key in ("row", "x", "miou") if raw.get(key) in (None, "")]
    if missing:
        raise BiglSamError(f"{path}: point {n} has no {', '.join(missing)}")
    point = {"row": str(raw["row"])}
    for key in ("x", "miou", "low", "high"):
        if raw.get(key) in (None, ""):
            continue
        try:
            point[key] = float(raw[key])
        except (TypeError, ValueError):
            raise BiglSamError(f"{path}: point {n}: {key} is not a number ({raw[key]!r})") from None
        if not math.isfinite(point[key]) or (key != "x" and not 0.0 <= point[key] <= 100.0):
            raise BiglSamError(f"{path}: point {n}: {key} {raw[key]!r} is not an mIoU x100 in [0, 100]"
                               if key != "x" else f"{path}: point {n}: x is not finite")
    if ("low" in point) != ("high" in point):
        raise BiglSamError(f"{path}: point {n} has only one end of its interval")
    return point


def add_points(path: Path, points: Sequence[dict]) -> Path:
    """Adds `points` ({row, x, value, low, high}: mIoU x100 and its interval, as `study intervals` gives)
    to the CSV points file `path` (created if missing), replacing a point of the same row and x; written
    atomically."""
    path = Path(path)
    kept = read_points(path) if path.exists() else []
    new = {(p["row"], float(p["x"])) for p in points}
    kept = [p for p in kept if (p["row"], p["x"]) not in new]
    added = [{"row": p["row"], "x": float(p["x"]), "miou": p["value"], "low": p["low"], "high": p["high"]}
             for p in points]
    lines = [",".join(POINT_FIELDS)]
    for p in kept + added:
        lines.append(",".join(_csv_cell(p.get(key, "")) for key in POINT_FIELDS))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_cell(value) -> str:
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def lines_of(points: Sequence[dict]) -> List[Line]:
    """One `Line` per row (in order of first appearance), points sorted by x; intervals where every point
    of the row has one."""
    rows: Dict[str, List[dict]] = {}
    for point in points:
        rows.setdefault(point["row"], []).append(point)
    lines = []
    for label, row in rows.items():
        row = sorted(row, key=lambda p: p["x"])
        intervals = [(p["low"], p["high"]) for p in row] if all("low" in p for p in row) else None
        lines.append(Line(label, [p["x"] for p in row], [p["miou"] for p in row], intervals))
    return lines


def plot_against_steps(points_file: Path, png: Path, title: str = "mIoU against distillation steps") -> Path:
    """Several rows' mIoU against distillation steps -> `png`."""
    lines = lines_of(read_points(points_file))
    steps = sorted({x for line in lines for x in line.xs})
    ticks = steps[:: max(1, math.ceil(len(steps) / MAX_TICKS))]
    return plot_lines(png, lines, title, "distillation steps", ticks)


def plot_against_keep_ratio(points_file: Path, png: Path, title: str = "mIoU against keep ratio") -> Path:
    """mIoU against the keep ratio (0.1 to 1.0) -> `png`."""
    lines = lines_of(read_points(points_file))
    outside = [x for line in lines for x in line.xs if not 0.0 < x <= 1.0]
    if outside:
        raise BiglSamError(f"{points_file}: keep ratio {outside[0]:g} is not in (0, 1]")
    return plot_lines(png, lines, title, "keep ratio", KEEP_RATIO_TICKS)
