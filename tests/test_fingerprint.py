"""Content fingerprints of weights and images (`bigl_sam.fingerprint`)."""

import hashlib
import json
import os

import pytest

from bigl_sam import fingerprint


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_a_file_is_hashed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"abc" * 1000)
    assert fingerprint.file_sha256(weights) == hashlib.sha256(b"abc" * 1000).hexdigest()
    cached = json.loads(fingerprint.cache_path().read_text())[str(weights.resolve())]
    assert cached["bytes"] == 3000
    monkeypatch.setattr(fingerprint.hashlib, "sha256", None)  # a second hash would fail
    assert fingerprint.file_sha256(weights) == cached["sha256"]


def test_a_file_rewritten_with_its_size_and_time_kept_is_hashed_again(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"a" * 100)
    first, stat = fingerprint.file_sha256(weights), weights.stat()
    weights.write_bytes(b"b" * 100)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint.file_sha256(weights) != first


def test_a_folder_is_the_content_of_its_files(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"1")
    first = fingerprint.weights_fingerprint(folder)
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"2")
    assert fingerprint.weights_fingerprint(folder) != first


def test_an_image_fingerprint_sees_another_picture_under_the_same_name(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(bytes(range(256)) * 1000)
    first = fingerprint.image_fingerprint(image)
    image.write_bytes(bytes(reversed(range(256))) * 1000)
    assert fingerprint.image_fingerprint(image) != first and first.startswith("256000:")


def test_the_changed_line_names_each_differing_entry():
    found = {"model": "bigl_test", "weights_sha256": ["a" * 64], "keep_ratio": 0.25}
    wanted = {"model": "bigl_test", "weights_sha256": ["b" * 64], "keep_ratio": 0.5}
    assert fingerprint.changed_line(found, wanted) == (f"keep_ratio (0.25 -> 0.5), weights_sha256 ([sha256 {'a' * 12}] "
                                                       f"-> [sha256 {'b' * 12}])")
