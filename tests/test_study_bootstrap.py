"""The study's 95% bootstrap intervals over instances, from synthetic eval records."""

import json

import numpy as np
import pytest

from bigl_sam.errors import BiglSamError
from bigl_sam.study.bootstrap import instance_ious, miou_interval, paired_intervals, read_records


def coco_records(ious_per_image):
    return [{"image_id": i, "file": f"{i}.jpg", "instances": [{"id": 10 * i + n, "area": 100.0, "iou": iou}
                                                              for n, iou in enumerate(ious)]}
            for i, ious in enumerate(ious_per_image)]


def write_run(folder, records):
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[::2]))
    (folder / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[1::2]))
    return folder


def synthetic(seed, count=400):
    rng = np.random.default_rng(seed)
    teacher = rng.uniform(0.3, 0.9, size=count)
    row = np.clip(teacher - rng.uniform(0.0, 0.1, size=count), 0, 1)  # always a little worse, paired
    return row, teacher


def as_instances(ious):
    return {(0, n): float(v) for n, v in enumerate(ious)}


def test_records_from_every_part_file(tmp_path):
    run = write_run(tmp_path / "runs" / "vit_mini-abc", coco_records([[0.5, 0.7], [0.9], []]))
    assert instance_ious(read_records(run)) == {(0, 0): 0.5, (0, 1): 0.7, (1, 10): 0.9}
    with pytest.raises(BiglSamError, match="no part-"):
        read_records(tmp_path)


def test_interactive_records_by_click():
    records = [{"image_id": 3, "objects": [{"id": 1, "ious": [0.2, 0.6, 0.8]}]}]
    assert instance_ious(records, click=1) == {(3, 1): 0.2}
    assert instance_ious(records) == {(3, 1): 0.8}
    with pytest.raises(BiglSamError, match="click 4"):
        instance_ious(records, click=4)


def test_interval_brackets_the_value_and_narrows_with_more_instances():
    row, _ = synthetic(0, 100)
    small = miou_interval(row, resamples=2000, seed=0)
    large = miou_interval(np.tile(row, 16), resamples=2000, seed=0)
    assert small.low < small.value < small.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    # about the normal approximation's width for a mean: 2 x 1.96 x sd / sqrt(n)
    expected = 2 * 1.96 * 100 * row.std() / np.sqrt(len(row))
    assert 0.8 * expected < small.high - small.low < 1.2 * expected


def test_paired_share_is_seeded_and_tighter_than_unpaired():
    row, teacher = synthetic(1)
    result = paired_intervals(as_instances(row), as_instances(teacher), resamples=2000, seed=7)
    assert result == paired_intervals(as_instances(row), as_instances(teacher), resamples=2000, seed=7)
    assert result != paired_intervals(as_instances(row), as_instances(teacher), resamples=2000, seed=8)
    share = result["share"]
    assert share["value"] == pytest.approx(row.mean() / teacher.mean())
    assert share["low"] < share["value"] < share["high"] < 1.0  # paired: the row is always below the teacher
    # unpaired (independent draws for row and teacher) would be far wider
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(row), size=(2, 2000, len(row)))
    unpaired = row[draws[0]].mean(axis=1) / teacher[draws[1]].mean(axis=1)
    width = np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5)
    assert share["high"] - share["low"] < 0.5 * width


def test_different_instances_are_refused():
    row, teacher = synthetic(2, 10)
    with pytest.raises(BiglSamError, match="different instances"):
        paired_intervals(as_instances(row[:9]), as_instances(teacher))
    with pytest.raises(BiglSamError, match="teacher's mIoU is 0"):
        paired_intervals(as_instances(row), as_instances(np.zeros(10)))
