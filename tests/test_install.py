"""A regular (non-editable) install works: the wheel carries the manifest, and the default weights folder
is the user cache, not a folder inside site-packages."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_wheel_install_lists_weights(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "bigl_sam", source / "bigl_sam", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."]
    subprocess.run(build, cwd=source, check=True, capture_output=True)
    wheel = next((source / "dist").glob("bigl_sam-*.whl"))
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # what installing a pure-Python wheel puts on sys.path, without pip
        archive.extractall(target)
    assert (target / "bigl_sam" / "manifest.json").is_file()

    env = {k: v for k, v in os.environ.items() if k not in ("BIGL_SAM_WEIGHTS", "XDG_CACHE_HOME")}
    env.update(PYTHONPATH=str(target), HOME=str(tmp_path / "home"))  # the test env's packages, then the wheel
    command = [sys.executable, "-c", "import sys, bigl_sam.cli; print(bigl_sam.cli.__file__); "
               "sys.exit(bigl_sam.cli.main(['weights', 'list']))"]
    listed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(str(target))  # the installed copy ran, not the source tree
    assert lines[1] == f"weights folder: {tmp_path / 'home' / '.cache' / 'bigl-sam' / 'weights'}"
    assert any(line.startswith("sam_vit_b_01ec64.pth") and line.endswith("missing") for line in lines)
