"""The manifest and `bigl-sam weights`: works with internet, fails clearly without it."""

import hashlib
import json
import re


from bigl_sam.cli import main
from bigl_sam.weights import read_manifest


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
    assert main(["weights", "verify", "tiny.pth", "--dir", str(tmp_path), "--manifest", str(manifest)]) == 0
    assert "OK" in capsys.readouterr().out
    (tmp_path / "tiny.pth").write_bytes(b"weights?")
    assert main(["weights", "verify", "tiny.pth", "--dir", str(tmp_path), "--manifest", str(manifest)]) == 2
    assert "does not match" in capsys.readouterr().err
    (tmp_path / "tiny.pth").write_bytes(b"weig")
    assert main(["weights", "verify", "tiny.pth", "--dir", str(tmp_path), "--manifest", str(manifest)]) == 2
    assert "4 bytes, expected 8" in capsys.readouterr().err


def test_download_without_network_fails_clearly(tmp_path, capsys):
    manifest = fake_manifest(tmp_path, b"weights!")  # port 9 on loopback: nothing listens
    code = main(["weights", "download", "tiny.pth", "--dir", str(tmp_path / "w"), "--manifest", str(manifest)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "could not download tiny.pth" in err and "weights verify tiny.pth" in err
    assert not (tmp_path / "w" / "tiny.pth").exists()


def test_unknown_checkpoint_name(tmp_path, capsys):
    assert main(["weights", "verify", "sam_vit_x.pth"]) == 2
    assert "unknown checkpoint 'sam_vit_x.pth'" in capsys.readouterr().err
