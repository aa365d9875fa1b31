"""From per-image records to the mIoU numbers and their table, and the time split every job reports."""

import pytest

from bigl_sam.evaluation.instances import differences, miou_summary, miou_table
from bigl_sam.evaluation.report import time_split, time_split_cell


def _record(image_id, instances, load=0.1, encode=0.3, decode=0.6):
    return {"image_id": image_id, "file": f"{image_id}.jpg", "load_s": load, "encode_s": encode, "decode_s": decode,
            "instances": [{"id": k, "area": area, "iou": iou} for k, (area, iou) in enumerate(instances)]}


RECORDS = [
    _record(1, [(100, 0.5), (5000, 0.8)]),  # small, medium
    _record(2, [(20000, 1.0), (200, 0.2)]),  # large, small
    {"image_id": 3, "file": "3.jpg", "skipped": "3.jpg: image file not found"},
]


def test_summary_means_per_size_bucket():
    summary = miou_summary(RECORDS)
    assert summary["miou"]["all"] == pytest.approx(100 * (0.5 + 0.8 + 1.0 + 0.2) / 4)
    assert summary["miou"]["small"] == pytest.approx(100 * (0.5 + 0.2) / 2)
    assert summary["miou"]["medium"] == pytest.approx(80.0)
    assert summary["miou"]["large"] == pytest.approx(100.0)
    assert summary["instances"] == {"all": 4, "small": 2, "medium": 1, "large": 1}


def test_summary_counts_time_and_skips():
    summary = miou_summary(RECORDS)
    assert summary["images"] == 2
    assert summary["seconds"] == pytest.approx(2.0)
    assert summary["images_per_s"] == pytest.approx(1.0)
    assert summary["instances_per_s"] == pytest.approx(2.0)
    assert summary["encoder_share"] == pytest.approx(0.3)
    assert summary["skipped_images"] == [{"file": "3.jpg", "reason": "3.jpg: image file not found"}]


def test_empty_bucket_has_no_mean():
    summary = miou_summary([_record(1, [(100, 0.5)])])
    assert summary["miou"]["large"] is None and summary["instances"]["large"] == 0


def test_differences_to_the_reference():
    reference = miou_summary(RECORDS)
    other = miou_summary([_record(1, [(100, 0.4), (5000, 0.8)]), _record(2, [(20000, 0.9), (200, 0.2)])])
    delta = differences(other, reference)
    assert delta["small"] == pytest.approx(-5.0)
    assert delta["medium"] == pytest.approx(0.0)
    assert delta["large"] == pytest.approx(-10.0)


def test_table_has_a_row_per_model_and_deltas_after_the_first():
    reference = {"label": "vit_h", **miou_summary(RECORDS)}
    student = {"label": "bigl_h_b", **miou_summary([_record(1, [(100, 0.4), (5000, 0.8)])])}
    lines = miou_table([reference, student]).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| vit_h | 62.5 |") and "(" not in lines[2]
    assert lines[3].startswith("| bigl_h_b | 60.0 (-2.5) | 40.0 (+5.0) | 80.0 (+0.0) | – |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_time_split_shares_and_cell():
    records = [dict(_record(1, [(100, 0.5)]), score_s=1.0)]  # 0.1 load, 0.3 encoder, 0.6 decoder, 1.0 scoring
    split = time_split(records)
    assert split["seconds"] == pytest.approx(2.0)
    assert split["share"] == pytest.approx({"load": 0.05, "encoder": 0.15, "decoder": 0.3, "scoring": 0.5})
    assert time_split_cell(split) == "5/15/30/50%"
    assert time_split_cell(time_split([])) == "–"
