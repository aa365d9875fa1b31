"""`bigl-sam study eval`: rows 5 and 6 run through eval's own engine, their records read by `study intervals`."""

import json

import pytest
import torch

from bigl_sam import cli
from bigl_sam.errors import BiglSamError
from bigl_sam.evaluation.runner import ModelSpec
from bigl_sam.pretrained import choose_weights
from bigl_sam.study.pruning import PrunedImageEncoder
from bigl_sam.modeling.random_routing import RandomRoutingEncoder
from bigl_sam.study.variants import VariantSpec
from eval_coco_data import make_coco_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco"))


@pytest.fixture
def study_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "study", ("bigl_sam.study.cli", "the quality study's steps"))


def coco(data, model, out):
    return ["coco", "--images", str(data["images"]), "--annotations", str(data["annotations"]), "--model", model,
            "--max-images", "2", "--out", str(out)]


def run_folder(out):
    (folder,) = (out / "runs").iterdir()
    return folder


def test_rows_5_and_6_evaluate_and_compare(data, tmp_path, study_command, capsys):
    assert cli.main(["eval"] + coco(data, "vit_test", tmp_path / "teacher")) == 0
    assert cli.main(["study", "eval", "--evit-keep-rate", "0.5"] + coco(data, "vit_test", tmp_path / "evit")) == 0
    assert cli.main(["study", "eval", "--random-routing", "3"] + coco(data, "bigl_test", tmp_path / "random")) == 0
    settings = json.loads((run_folder(tmp_path / "evit") / "settings.json").read_text())
    assert settings["variant"] == {"evit_keep_rate": 0.5, "prune_layers": None}
    settings = json.loads((run_folder(tmp_path / "random") / "settings.json").read_text())
    assert settings["variant"] == {"random_routing_seed": 3} and settings["keep_ratio"] == 0.25
    capsys.readouterr()
    argv = ["study", "intervals", "--teacher", str(run_folder(tmp_path / "teacher")), "--resamples", "100",
            "--row", f"6={run_folder(tmp_path / 'evit')}", "--row", f"5={run_folder(tmp_path / 'random')}"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["6"]["instances"] == result["5"]["instances"] > 0
    assert result["6"]["miou"]["value"] != result["6"]["teacher_miou"]["value"]  # pruning changed the masks


def test_variant_spec_loads_the_variant():
    pruned = VariantSpec("vit_test", choose_weights("vit_test", None, None), evit_keep_rate=0.5, prune_layers=(0,))
    encoder = pruned.load("cpu").image_encoder
    assert isinstance(encoder, PrunedImageEncoder) and encoder.prune_layers == (0,)
    routed = VariantSpec("bigl_test", choose_weights("bigl_test", None, None), random_routing_seed=1)
    assert isinstance(routed.load("cpu").image_encoder, RandomRoutingEncoder)


def test_fresh_student_is_the_sam_at_keep_1_and_seeded():
    """Row 2 (the student fresh from the teacher, at keep 1.0, equals it) and row 3 (at 0.25, an untrained
    router, the same one on every load)."""
    weights = choose_weights("vit_test", None, None)
    sam = ModelSpec("vit_test", weights).load("cpu")
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    dense = VariantSpec("vit_test", weights, 1.0, fresh_student="bigl_test").load("cpu")
    routed = [VariantSpec("vit_test", weights, 0.25, fresh_student="bigl_test").load("cpu") for _ in range(2)]
    assert routed[0].image_encoder.keep_ratio == 0.25 and dense.image_encoder.keep_ratio == 1.0
    with torch.no_grad():
        assert torch.allclose(dense.image_encoder(x), sam.image_encoder(x), atol=1e-4)
        assert torch.equal(routed[0].image_encoder(x), routed[1].image_encoder(x))
    both = VariantSpec("vit_test", weights, fresh_student="bigl_test", random_routing_seed=2).load("cpu")
    assert isinstance(both.image_encoder, RandomRoutingEncoder)


@pytest.mark.parametrize("name, variant, message", [
    ("bigl_test", {"evit_keep_rate": 0.5}, "is a big.LITTLE student"),
    ("vit_test", {"random_routing_seed": 0}, "is SAM's own ViT"),
    ("vit_test", {}, "needs"),
    ("vit_test", {"evit_keep_rate": 1.5}, "evit-keep-rate must be in"),
    ("vit_test", {"evit_keep_rate": 0.5, "fresh_student": "bigl_test"}, "goes with neither"),
    ("vit_test", {"prune_layers": (0,), "fresh_student": "bigl_test"}, "goes with --evit-keep-rate"),
    ("bigl_test", {"fresh_student": "bigl_test"}, "is a student already"),
    ("vit_test", {"fresh_student": "vit_b"}, "not a big.LITTLE student"),
])
def test_bad_variants_are_refused(name, variant, message):
    with pytest.raises(BiglSamError, match=message):
        VariantSpec(name, choose_weights(name, None, None), **variant)


def test_bad_prune_layers_are_one_line(data, tmp_path, study_command, capsys):
    argv = ["study", "eval", "--evit-keep-rate", "0.5", "--prune-layers", "7"] + coco(data, "vit_test", tmp_path)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--prune-layers '7': layers are 0..1")
