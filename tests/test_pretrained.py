"""The one rule for weights (bigl_sam.pretrained): student file > SAM's official files > random, in the Python
API and in eval's model loading; the keep ratio each starts at."""

import pytest
import torch
from conftest import official_weights_folder

import bigl_sam
from bigl_sam import build_sam, load_student, save_checkpoint
from bigl_sam.cli import main
from bigl_sam.errors import BiglSamError
from bigl_sam.pretrained import CHECKPOINT, OFFICIAL, RANDOM, ModelSpec, choose_weights, folder_lines

OFFICIAL_TEST_FILE = "sam_vit_test_000000.pth"


def same_tensors(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b)


@pytest.fixture
def folders(tmp_path, official_checkpoint, student_checkpoint):
    """Three weights folders with the shipped manifest's layout for the tiny models: empty, with SAM's
    official file, and with that file plus a student file."""
    empty = tmp_path / "empty"
    empty.mkdir()
    official_file = official_checkpoint("vit_test")
    manifest = official_weights_folder(tmp_path / "official", {OFFICIAL_TEST_FILE: ("vit_test", official_file)})
    official_weights_folder(tmp_path / "both", {OFFICIAL_TEST_FILE: ("vit_test", official_file)})
    (tmp_path / "both" / "bigl_test_v1.pth").write_bytes(student_checkpoint("bigl_test").read_bytes())
    return {"empty": empty, "official": tmp_path / "official", "both": tmp_path / "both", "manifest": manifest,
            "official_file": official_file}


def test_python_api_follows_student_then_official_then_random(folders):
    manifest = folders["manifest"]
    with pytest.warns(UserWarning, match="bigl_test: RANDOM WEIGHTS"):
        random = load_student("bigl_test", folders["empty"], manifest)
    assert random.weights_source.kind == RANDOM and random.image_encoder.keep_ratio == 0.25

    built = load_student("bigl_test", folders["official"], manifest)
    assert built.weights_source.kind == OFFICIAL and built.weights_source.untrained_router
    assert built.image_encoder.keep_ratio == 1.0  # an untrained router starts where the student is SAM
    official = torch.load(folders["official_file"], weights_only=True)
    encoder = {f"image_encoder.{k}": v for k, v in built.image_encoder.state_dict().items()}
    assert same_tensors(encoder, {k: v for k, v in official.items() if k.startswith("image_encoder.patch")})
    assert same_tensors(built.state_dict(), {k: v for k, v in official.items() if k.startswith("mask_decoder.")})

    student = load_student("bigl_test", folders["both"], manifest)
    assert student.weights_source.kind == CHECKPOINT
    assert student.weights_source.files == (folders["both"] / "bigl_test_v1.pth",)
    assert not same_tensors(student.state_dict(), built.state_dict())


def test_each_choice_is_one_line_naming_its_files(folders):
    lines = {name: choose_weights("bigl_test", None, folders[name], folders["manifest"]).describe()
             for name in ("empty", "official", "both")}
    assert all("\n" not in line for line in lines.values())
    assert "RANDOM WEIGHTS" in lines["empty"] and OFFICIAL_TEST_FILE in lines["empty"]
    assert "bigl_test*.pth" in lines["empty"] and str(folders["empty"]) in lines["empty"]
    assert "built from SAM's official files" in lines["official"] and OFFICIAL_TEST_FILE in lines["official"]
    assert "keep ratio 1.0" in lines["official"]
    assert lines["both"] == f"bigl_test: weights from {folders['both'] / 'bigl_test_v1.pth'}"


def test_official_prompt_encoder_and_decoder_come_from_the_teacher_file(tmp_path):
    """Reads no weights: ViT-B and ViT-H stand-ins of the manifest's (here: their own) sizes."""
    (tmp_path / "b").write_bytes(b"b" * 10)
    (tmp_path / "h").write_bytes(b"h" * 20)
    files = {"sam_vit_b_01ec64.pth": ("vit_b", tmp_path / "b"), "sam_vit_h_4b8939.pth": ("vit_h", tmp_path / "h")}
    manifest = official_weights_folder(tmp_path / "w", files)
    choice = choose_weights("bigl_b_t", None, tmp_path / "w", manifest)
    assert choice.kind == OFFICIAL
    assert [p.name for p in choice.files] == ["sam_vit_b_01ec64.pth", "sam_vit_h_4b8939.pth"]
    (tmp_path / "w" / "sam_vit_h_4b8939.pth").unlink()
    assert [p.name for p in choose_weights("bigl_b_t", None, tmp_path / "w", manifest).files] == [
        "sam_vit_b_01ec64.pth", "sam_vit_b_01ec64.pth"]
    assert choose_weights("vit_h", None, tmp_path / "w", manifest).wanted == ("sam_vit_h_4b8939.pth",)


def test_shipped_manifest_names_the_official_files(tmp_path):
    choice = choose_weights("bigl_b_t", None, tmp_path)
    assert choice.kind == RANDOM and choice.wanted == ("sam_vit_b_01ec64.pth", "sam_vit_h_4b8939.pth")


def test_an_official_file_of_the_wrong_size_is_an_error(folders):
    path = folders["official"] / OFFICIAL_TEST_FILE
    path.unlink()
    path.write_bytes(b"cut short")
    with pytest.raises(BiglSamError, match=f"{OFFICIAL_TEST_FILE}: 9 bytes, expected"):
        load_student("bigl_test", folders["official"], folders["manifest"])


def test_registry_stays_random_as_in_sam(folders, monkeypatch):
    monkeypatch.setenv("BIGL_SAM_WEIGHTS", str(folders["both"]))
    torch.manual_seed(0)
    random = bigl_sam.sam_model_registry["bigl_test"]()
    official = torch.load(folders["official_file"], weights_only=True)
    assert not torch.equal(random.mask_decoder.iou_token.weight, official["mask_decoder.iou_token.weight"])
    assert random.image_encoder.keep_ratio == 0.25
    with pytest.raises(BiglSamError, match="not a student"):
        load_student("vit_test", folders["both"])


def test_eval_loads_by_the_same_rule(folders):
    device = torch.device("cpu")
    loaded = {}
    for name in ("empty", "official", "both"):
        spec = ModelSpec("bigl_test", choose_weights("bigl_test", None, folders[name], folders["manifest"]))
        model = spec.load(device)
        settings = spec.settings(model)
        loaded[name] = (spec.weights.kind, settings["keep_ratio"], settings["weights_sha256"], spec.weights.files)
    assert loaded["empty"][:3] == (RANDOM, 0.25, None)
    kind, keep, sha256, files = loaded["official"]
    assert (kind, keep) == (OFFICIAL, 1.0) and [f.name.endswith(OFFICIAL_TEST_FILE) for f in files] == [True] * 2
    assert [len(digest) for digest in sha256] == [64, 64]  # the files' content identifies the run
    kind, keep, sha256, files = loaded["both"]
    assert kind == CHECKPOINT and files[0].name.endswith("bigl_test_v1.pth")
    explicit = ModelSpec("bigl_test", choose_weights("bigl_test", None, folders["official"], folders["manifest"]), 0.5)
    assert explicit.load(device).image_encoder.keep_ratio == 0.5  # an explicit --keep-ratio wins


def test_keep_ratio_saved_is_the_keep_ratio_loaded(tmp_path, folders):
    """The keep ratio a student is saved with is the one it loads with, not its registry default."""
    model = build_sam("bigl_test")
    model.image_encoder.keep_ratio = 0.6
    path = save_checkpoint(model, tmp_path / "bigl_test_dial.pth")
    assert bigl_sam.load_sam(path).image_encoder.keep_ratio == 0.6
    assert build_sam("bigl_test", path).image_encoder.keep_ratio == 0.6
    assert bigl_sam.sam_model_registry["bigl_test"](checkpoint=path).image_encoder.keep_ratio == 0.6
    assert load_student("bigl_test", tmp_path, folders["manifest"]).image_encoder.keep_ratio == 0.6
    spec = ModelSpec("bigl_test", choose_weights("bigl_test", path))
    assert spec.settings(spec.load(torch.device("cpu")))["keep_ratio"] == 0.6
    explicit = ModelSpec("bigl_test", choose_weights("bigl_test", path), keep_ratio=0.3)
    assert explicit.load(torch.device("cpu")).image_encoder.keep_ratio == 0.3


def test_the_exact_student_name_wins_and_a_real_ambiguity_is_refused(tmp_path, capsys, student_checkpoint, folders):
    """`bigl_test_init.pth` (as the README names a student fresh from SAM) sorted after `bigl_test.pth` and
    shadowed it."""
    (tmp_path / "bigl_test.pth").write_bytes(student_checkpoint("bigl_test", seed=1).read_bytes())
    (tmp_path / "bigl_test_init.pth").write_bytes(student_checkpoint("bigl_test", seed=2).read_bytes())
    assert choose_weights("bigl_test", None, tmp_path, folders["manifest"]).files == (tmp_path / "bigl_test.pth",)
    (tmp_path / "bigl_test.pth").unlink()
    assert choose_weights("bigl_test", None, tmp_path).files == (tmp_path / "bigl_test_init.pth",)  # the only one
    (tmp_path / "bigl_test_v2.pth").write_bytes(b"")
    with pytest.raises(BiglSamError) as refused:
        load_student("bigl_test", tmp_path, folders["manifest"])
    message = str(refused.value)
    assert "\n" not in message and "bigl_test_init.pth, bigl_test_v2.pth" in message and "bigl_test.pth" in message
    # the commands refuse it in one line, before reading any data
    code = main(["eval", "coco", "--images", str(tmp_path / "none"), "--annotations", str(tmp_path / "none.json"),
                 "--model", "bigl_test", "--weights-dir", str(tmp_path)])
    assert code == 2 and capsys.readouterr().err.strip() == f"bigl-sam eval: error: {message}"


def test_random_weights_say_why(tmp_path, folders):
    """An empty list of files looked for, and folders that cannot be searched, each get their own words."""
    assert choose_weights("vit_test", None, folders["empty"]).describe() == (
        "vit_test: RANDOM WEIGHTS (no checkpoint given, and the manifest names no official file for it)"
    )
    (tmp_path / "a_file").write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    problems = {"nowhere": "does not exist", "a_file": "is a file, not a folder", "loop": "is a symlink loop",
                "dangling": "is a broken symlink"}
    for name, problem in problems.items():
        for model in ("bigl_test", "vit_test"):
            choice = choose_weights(model, None, tmp_path / name, folders["manifest"])
            assert choice.random and choice.folder_problem == problem
        expected = f"weights folder {tmp_path / name} {problem}; looked for bigl_test*.pth, {OFFICIAL_TEST_FILE})"
        assert choose_weights("bigl_test", None, tmp_path / name, folders["manifest"]).describe().endswith(expected)


def test_the_weights_folder_is_named_once_and_only_when_it_was_searched(tmp_path):
    searched = [choose_weights(name, folder=tmp_path) for name in ("vit_test", "bigl_test")]
    given = choose_weights("vit_test", checkpoint=tmp_path / "mine.pth", folder=tmp_path)
    assert folder_lines(searched + [given]) == [f"weights folder: {tmp_path}"]
    assert folder_lines([given]) == []
