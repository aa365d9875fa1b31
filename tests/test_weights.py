"""The manifest and `bigl-sam weights`: works with internet, fails clearly without it."""

import hashlib
import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import bigl_sam.weights
from bigl_sam.cli import main
from bigl_sam.weights import read_manifest, weights_dir


def fake_manifest(tmp_path, payload: bytes, url: str = "http://127.0.0.1:9/none.pth"):
    entry = {"name": "tiny.pth", "model": "vit_test", "url": url, "bytes": len(payload),
             "sha256": hashlib.sha256(payload).hexdigest()}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"checkpoints": [entry]}))
    return path


def test_shipped_manifest_is_complete():
    manifest = read_manifest()
    assert {e.model for e in manifest.values()} == {"vit_b", "vit_l", "vit_h"}
    for entry in manifest.values():
        assert entry.url.startswith("https://") and entry.url.endswith(entry.name)
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.bytes > 10**8
        assert entry.name.split("_")[-1].split(".")[0] == entry.md5[:6]


def test_verify_good_and_bad_files(tmp_path, capsys):
    manifest = fake_manifest(tmp_path, b"weights!")
    (tmp_path / "tiny.pth").write_bytes(b"weights!")
    assert main(["weights", "verify", "tiny.pth", "--weights-dir", str(tmp_path), "--manifest", str(manifest)]) == 0
    assert "OK" in capsys.readouterr().out
    (tmp_path / "tiny.pth").write_bytes(b"weights?")
    assert main(["weights", "verify", "tiny.pth", "--weights-dir", str(tmp_path), "--manifest", str(manifest)]) == 2
    assert "does not match" in capsys.readouterr().err
    (tmp_path / "tiny.pth").write_bytes(b"weig")
    assert main(["weights", "verify", "tiny.pth", "--weights-dir", str(tmp_path), "--manifest", str(manifest)]) == 2
    assert "4 bytes, expected 8" in capsys.readouterr().err


def test_download_without_network_fails_clearly(tmp_path, capsys):
    manifest = fake_manifest(tmp_path, b"weights!")  # port 9 on loopback: nothing listens
    code = main(["weights", "download", "tiny.pth", "--weights-dir", str(tmp_path / "w"), "--manifest", str(manifest)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "could not download tiny.pth" in err and "weights verify tiny.pth" in err
    assert not (tmp_path / "w" / "tiny.pth").exists()


def test_unknown_checkpoint_name(tmp_path, capsys):
    assert main(["weights", "verify", "sam_vit_x.pth"]) == 2
    assert "unknown checkpoint 'sam_vit_x.pth'" in capsys.readouterr().err


class FakeServer:
    """Stands in for `urllib.request.urlopen`: serves `payload`, honours Range headers (206), answers a
    range that starts at or past the end with HTTP 416, as real servers do."""

    def __init__(self, payload: bytes):
        self.payload, self.ranges = payload, []

    def __call__(self, request, timeout=None):
        header = request.get_header("Range")
        self.ranges.append(header)
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        if start >= len(self.payload):
            raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable", {}, None)
        response = io.BytesIO(self.payload[start:])
        response.status = 206 if header else 200
        return response


def download(tmp_path, manifest):
    return main(["weights", "download", "tiny.pth", "--weights-dir", str(tmp_path / "w"), "--manifest", str(manifest)])


def test_a_download_that_fails_its_check_is_never_under_its_name(tmp_path, capsys):
    served = tmp_path / "served.pth"
    served.write_bytes(b"weights?")  # the manifest says b"weights!"
    manifest = fake_manifest(tmp_path, b"weights!", url=served.as_uri())
    assert download(tmp_path, manifest) == 2
    err = capsys.readouterr().err
    assert "failed its check and was removed" in err and "does not match" in err
    assert not (tmp_path / "w" / "tiny.pth").exists() and not (tmp_path / "w" / "tiny.pth.part").exists()
    served.write_bytes(b"weights!")
    assert download(tmp_path, manifest) == 0
    assert (tmp_path / "w" / "tiny.pth").read_bytes() == b"weights!"


@pytest.fixture
def half_done(tmp_path, monkeypatch):
    """A FakeServer of b"weights!" in place of urlopen, the manifest of that file, and its .part holding the
    first 4 bytes."""
    server = FakeServer(b"weights!")
    monkeypatch.setattr(urllib.request, "urlopen", server)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "tiny.pth.part").write_bytes(b"weig")
    return server, fake_manifest(tmp_path, b"weights!")


def test_download_resumes_and_restarts_a_part_longer_than_the_file(tmp_path, half_done):
    server, manifest = half_done
    assert download(tmp_path, manifest) == 0 and server.ranges == ["bytes=4-"]
    (tmp_path / "w" / "tiny.pth").unlink()
    (tmp_path / "w" / "tiny.pth.part").write_bytes(b"weights!-and-more")
    assert download(tmp_path, manifest) == 0 and server.ranges[-1] is None
    assert (tmp_path / "w" / "tiny.pth").read_bytes() == b"weights!"


def test_a_refused_resume_starts_again(tmp_path, half_done):
    """HTTP 416 for a .part the server will not continue restarts the download from byte 0."""
    server, manifest = half_done
    server.payload = b"wei"  # the server's copy is shorter than the .part: it answers 416 to "bytes=4-"
    assert download(tmp_path, manifest) == 2 and server.ranges == ["bytes=4-", None]
    assert not (tmp_path / "w" / "tiny.pth.part").exists() and not (tmp_path / "w" / "tiny.pth").exists()
    (tmp_path / "w" / "tiny.pth.part").write_bytes(b"weights!")  # complete already: checked, not fetched
    assert download(tmp_path, manifest) == 0 and len(server.ranges) == 2


def test_list_says_present_only_for_the_right_size(tmp_path, capsys):
    manifest = fake_manifest(tmp_path, b"weights!")

    def listed():
        assert main(["weights", "list", "--weights-dir", str(tmp_path / "w"), "--manifest", str(manifest)]) == 0
        folder_line, entry_line = capsys.readouterr().out.splitlines()
        assert folder_line == f"weights folder: {tmp_path / 'w'}"
        return entry_line

    assert listed().endswith("missing")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "tiny.pth.part").write_bytes(b"weig")
    assert "partial (4 of 8 bytes" in listed()
    (tmp_path / "w" / "tiny.pth").write_bytes(b"weig")
    assert "wrong size (4 bytes)" in listed() and "present" not in listed()
    (tmp_path / "w" / "tiny.pth").write_bytes(b"weights!")
    assert listed().endswith("present")


def test_default_weights_folder_is_the_variable_else_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(bigl_sam.weights, "PACKAGE_DIR", fake_package(tmp_path / "site-packages"))  # not a checkout
    monkeypatch.setenv("BIGL_SAM_WEIGHTS", str(tmp_path / "mine"))
    assert weights_dir() == tmp_path / "mine"
    monkeypatch.delenv("BIGL_SAM_WEIGHTS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights_dir() == tmp_path / "cache" / "bigl-sam" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights_dir() == tmp_path / "home" / ".cache" / "bigl-sam" / "weights"


def fake_package(root, pyproject=None, weights=True):
    """A package folder `root/bigl_sam` as weights.py would sit in it: `root` with a pyproject.toml of
    `pyproject` (None: none) and a weights/ folder (or not)."""
    (root / "bigl_sam").mkdir(parents=True)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject)
    if weights:
        (root / "weights").mkdir()
    return root / "bigl_sam"


OURS = '[project]\nname = "bigl-sam"\nversion = "0.1.0"\n'


@pytest.mark.parametrize("layout, pyproject, weights, expected", [
    ("checkout", OURS, True, "checkout"),
    ("checkout without weights/", OURS, False, "cache"),
    ("another project's checkout", '[project]\nname = "bigl-sam-plugin"\n', True, "cache"),
    ("wheel in site-packages", None, True, "cache"),  # site-packages/weights/ of another package
])
def test_weights_folder_is_the_checkouts_only_from_a_checkout(monkeypatch, tmp_path, layout, pyproject, weights,
                                                              expected):
    monkeypatch.setattr(bigl_sam.weights, "PACKAGE_DIR", fake_package(tmp_path / "root", pyproject, weights))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BIGL_SAM_WEIGHTS")
    folders = {"checkout": tmp_path / "root" / "weights", "cache": tmp_path / "cache" / "bigl-sam" / "weights"}
    assert weights_dir() == folders[expected], layout
    monkeypatch.setenv("BIGL_SAM_WEIGHTS", str(tmp_path / "mine"))  # the variable first, checkout or not
    assert weights_dir() == tmp_path / "mine"


def test_this_checkout_has_its_weights_folder():
    """The tests run from the source checkout: its weights/ (README only in git) is the checkout's folder."""
    assert bigl_sam.weights.checkout_weights_dir() == Path(__file__).resolve().parents[1] / "weights"
    assert (Path(__file__).resolve().parents[1] / "weights" / "README.md").is_file()


def test_the_former_dir_flag_still_names_the_folder_and_warns(tmp_path, capsys):
    manifest = fake_manifest(tmp_path, b"weights!")
    assert main(["weights", "list", "--dir", str(tmp_path / "w"), "--manifest", str(manifest)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == f"weights folder: {tmp_path / 'w'}"
    assert "--dir is now --weights-dir" in captured.err
