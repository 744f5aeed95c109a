"""Exporting a run's backbone (safetensors + JSON), loading it back, refusing files that lie; no leaked secrets."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import pretextlab
from omegaconf import DictConfig

from pretextlab.checkpoints import read_checkpoint
from pretextlab.export.cli import main
from pretextlab.export.format import ExportError, load_backbone
from pretextlab.export.run import export_backbone
from pretextlab.train import run
from tests.conftest import FAST_RUN, compose_config

FAKE_KEY = "sk-fake-123"
FAST = [
    *FAST_RUN,
    "logger=csv",  # writes the module's hyper-parameters: one more place a secret could leak into
    # A credential interpolated into the config, under an innocent name and under a telling one.
    "+extra.notes=run by ${oc.env:WANDB_API_KEY}",
    "+extra.wandb_api_key=${oc.env:WANDB_API_KEY}",
]


def _compose(overrides: list[str], run_dir: Path) -> DictConfig:
    # conftest's make_config is per test; the finished run below is shared by the whole module.
    return compose_config(overrides, run_dir, tiny=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished rotation run (shared by the tests of this file), made with a fake W&B key set."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_API_KEY", FAKE_KEY)
        results = run(_compose(FAST, run_dir))
        assert results["status"] == "ok"
        export_backbone(run_dir)  # exported while the key is in the environment
    return run_dir


def _trained_backbone(run_dir: Path) -> torch.nn.Module:
    from pretextlab.backbones import build_backbone

    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    config = json.loads((run_dir / "results.json").read_text())["config"]["backbone"]
    backbone = build_backbone(**{k: v for k, v in config.items() if k != "_target_"})
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in checkpoint["state_dict"].items()
                              if k.startswith("backbone.")})
    return backbone.eval()


def test_export_writes_weights_and_a_description(finished_run):
    weights = finished_run / "export" / "backbone.safetensors"
    metadata = json.loads(weights.with_suffix(".json").read_text())
    assert weights.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header
    assert metadata["build_config"] == {"name": "convnet", "width": 16, "num_blocks": 4, "convs_per_block": 1,
                                        "in_channels": 3}
    assert metadata["input"]["kind"] == "rgb_normalized"
    assert len(metadata["input"]["mean"]) == 3 and len(metadata["input"]["std"]) == 3
    assert metadata["feature_dim"] == 128 and metadata["in_channels"] == 3
    assert metadata["stage_names"] == ["block1", "block2", "block3", "block4"] and metadata["stage"] is None
    assert metadata["task"] == "rotation" and metadata["checkpoint"]["global_step"] == 2


def test_load_backbone_gives_the_trained_features(finished_run):
    loaded = pretextlab.load_backbone(str(finished_run / "export" / "backbone.safetensors"))
    reference = _trained_backbone(finished_run)
    images = torch.rand(4, 3, 32, 32)
    assert not loaded.training
    torch.testing.assert_close(loaded(images), reference(images), rtol=0, atol=0)
    # The folder or the JSON name the same export.
    torch.testing.assert_close(load_backbone(finished_run / "export")(images), reference(images), rtol=0, atol=0)


def test_export_cut_at_a_stage(finished_run, tmp_path, capsys):
    output = tmp_path / "block2.safetensors"
    assert main([str(finished_run), "--stage", "block2", "--output", str(output)]) == 0
    assert "wrote" in capsys.readouterr().out
    metadata = json.loads(output.with_suffix(".json").read_text())
    assert metadata["stage"] == "block2" and metadata["feature_dim"] == 32
    assert metadata["stage_names"] == ["block1", "block2"]
    loaded = load_backbone(output)
    images = torch.rand(2, 3, 32, 32)
    expected = _trained_backbone(finished_run).forward_stages(images, ["block2"])["block2"]
    assert loaded.feature_dim == 32 and loaded.stage_names == ("block1", "block2")
    torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)


def test_export_errors_are_one_clear_line(finished_run, tmp_path, capsys):
    assert main([str(finished_run), "--stage", "block9", "--output", str(tmp_path / "x.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("pretextlab.export: error: --stage 'block9': the backbone's stages are")
    assert main([str(tmp_path / "missing")]) == 2
    assert "run directory" in capsys.readouterr().err
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "has no results.json" in capsys.readouterr().err


@pytest.fixture
def exported_copy(finished_run, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(finished_run / "export", target)
    return target / "backbone.safetensors"


def _edit_metadata(weights: Path, change) -> None:
    path = weights.with_suffix(".json")
    metadata = json.loads(path.read_text())
    change(metadata)
    path.write_text(json.dumps(metadata))


def test_garbage_weights_are_refused(exported_copy):
    exported_copy.write_bytes(os.urandom(256))
    with pytest.raises(ExportError, match="does not match the checksum"):
        load_backbone(exported_copy)
    with pytest.raises(ExportError, match="is not a safetensors file"):
        load_backbone(exported_copy, verify_checksum=False)


def test_broken_or_foreign_json_is_refused(exported_copy):
    metadata = exported_copy.with_suffix(".json")
    metadata.write_text("{not json")
    with pytest.raises(ExportError, match="is not valid JSON"):
        load_backbone(exported_copy)
    metadata.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ExportError, match="is not a pretextlab backbone description"):
        load_backbone(exported_copy)
    metadata.unlink()
    with pytest.raises(ExportError, match="no metadata file"):
        load_backbone(exported_copy)


def test_missing_keys_are_refused(exported_copy):
    _edit_metadata(exported_copy, lambda m: m.pop("build_config"))
    with pytest.raises(ExportError, match=r"lacks \['build_config'\]"):
        load_backbone(exported_copy)


def test_weights_that_do_not_fit_the_description_are_refused(exported_copy):
    _edit_metadata(exported_copy, lambda m: m["build_config"].update(width=8))
    with pytest.raises(ExportError, match=r"does not match the described backbone: shape mismatch"):
        load_backbone(exported_copy)
    _edit_metadata(exported_copy, lambda m: m["build_config"].update(width=16, num_blocks=3))
    with pytest.raises(ExportError, match=r"does not match the described backbone: unexpected \['blocks.3"):
        load_backbone(exported_copy)


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_code_in_it_is_never_unpickled(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, ignore=shutil.ignore_patterns("export"))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # our own file
    marker = tmp_path / "code-ran"
    checkpoint["callbacks"]["evil"] = _Payload(marker)
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ExportError, match=r"holds objects other than tensors and plain values .*--trust-checkpoint"):
        export_backbone(run_dir)
    assert not marker.exists()
    assert not (run_dir / "export").exists()


def test_secrets_never_reach_any_output(finished_run):
    results = json.loads((finished_run / "results.json").read_text())
    assert results["config"]["extra"]["notes"] == "run by <redacted>"
    assert results["config"]["extra"]["wandb_api_key"] == "<redacted>"
    leaks = [str(path) for path in finished_run.rglob("*") if path.is_file()
             and FAKE_KEY.encode() in path.read_bytes()]
    assert leaks == []
    # The exported description, and a failure record, are scrubbed as well.
    assert FAKE_KEY not in (finished_run / "export" / "backbone.json").read_text()


def test_a_failure_record_does_not_leak_the_key(finished_run, tmp_path, monkeypatch):
    from pretextlab.train import _record_failure

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = _compose(FAST, tmp_path / "failed")
    _record_failure(cfg, RuntimeError(f"the service rejected key {FAKE_KEY}"))
    text = (tmp_path / "failed" / "results.json").read_text()
    assert FAKE_KEY not in text and "rejected key <redacted>" in text


# -- descriptions that lie (issue 15, defect 8) ------------------------------------------------------
MALFORMED_FIELDS = [
    ("format_version", "abc"), ("format_version", "1"), ("format_version", 1.5), ("format_version", True),
    ("format_version", None), ("format_version", 0), ("format_version", [1]),
    ("build_config.width", 10**12), ("build_config.width", "16"), ("build_config.width", {"a": 1}),
    ("build_config.width", float("inf")), ("build_config.name", "nope"), ("build_config.name", 7),
    ("build_config", "convnet"), ("in_channels", "3"), ("in_channels", 0), ("feature_dim", [128]),
    ("feature_dim", -1), ("stage_names", "block1"), ("stage_names", []), ("stage_names", [1, 2]),
    ("stage_dims", "16"), ("stage", 5), ("stage", "block9"), ("weights_sha256", 123), ("weights_sha256", "xyz"),
    ("input", None), ("input", []), ("input.mean", ["a", "b", "c"]), ("input.std", [0, 1, 1]),
    ("input.image_size", "32"), ("min_input_size", -1),
]


def _set(metadata: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = metadata
    for part in parents:
        node = node[part]
    node[last] = value


@pytest.mark.parametrize("field,value", MALFORMED_FIELDS, ids=[f"{f}={v!r}" for f, v in MALFORMED_FIELDS])
def test_every_malformed_field_is_an_export_error(exported_copy, field, value):
    _edit_metadata(exported_copy, lambda m: _set(m, field, value))
    with pytest.raises(ExportError, match=rf"backbone\.json: .*{field.split('.')[-1]}"):
        load_backbone(exported_copy, verify_checksum=False)


def test_the_command_line_checks_an_export_in_one_line(exported_copy, capsys):
    assert main(["--check", str(exported_copy)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {exported_copy}: convnet backbone")
    _edit_metadata(exported_copy, lambda m: m.update(format_version="abc"))
    assert main(["--check", str(exported_copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pretextlab.export: error: ") and "format_version='abc' must be an integer" in err
    assert len(err.strip().splitlines()) == 1


def _write_export(backbone, folder: Path) -> Path:
    """A backbone's weights + description in export's format (any backbone, not only a run's)."""
    import hashlib

    from safetensors.torch import save

    from pretextlab.export.format import FORMAT, FORMAT_VERSION

    blob = save({k: v.contiguous() for k, v in backbone.state_dict().items()})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "backbone.safetensors").write_bytes(blob)
    (folder / "backbone.json").write_text(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "build_config": backbone.build_config,
        "weights_sha256": hashlib.sha256(blob).hexdigest(), "stage": None, "stage_names": list(backbone.stage_names),
        "stage_dims": list(backbone.stage_dims), "feature_dim": backbone.feature_dim,
        "in_channels": backbone.in_channels, "input": {"kind": "rgb_normalized", "mean": None, "std": None},
    }))
    return folder / "backbone.safetensors"


@pytest.fixture
def real_builds(monkeypatch) -> list[dict]:
    """The build configs pretextlab.export builds on a real device (not shape-only ``meta`` tensors)."""
    import pretextlab.export.format as export_format

    built: list[dict] = []
    original = export_format.build_backbone

    def spy(**kwargs):
        if torch.empty(0).device.type != "meta":
            built.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(export_format, "build_backbone", spy)
    return built


HUGE = [
    # convnet width 512 (64 M parameters, 256 MB; 16 in the weights): allocated and initialised before failing
    ("convnet width", {"name": "convnet", "width": 512}, "does not match the described backbone"),
    # a ViT 5,000 blocks deep (one in the weights): stopped after a few hundred tensors, not 5,000 blocks built
    ("vit depth", {"name": "vit", "image_size": 32, "patch_size": 4, "dim": 16, "depth": 5000, "heads": 2},
     "describes a backbone of more than"),
    # the same weights fit a ViT for 2^20 px images, whose position embedding alone would be terabytes
    ("vit image size", {"name": "vit", "image_size": 2**20, "patch_size": 4, "dim": 16, "depth": 1, "heads": 2},
     "would need"),
]


@pytest.mark.parametrize("what,change,message", HUGE, ids=[h[0] for h in HUGE])
def test_a_huge_description_is_refused_before_anything_is_built(tmp_path, real_builds, what, change, message):
    from pretextlab.backbones import build_backbone

    small = {"convnet": {"name": "convnet", "width": 16},
             "vit": {"name": "vit", "image_size": 32, "patch_size": 4, "dim": 16, "depth": 1, "heads": 2}}
    weights = _write_export(build_backbone(**small[change["name"]]), tmp_path / "export")
    load_backbone(weights)  # the honest description loads
    assert len(real_builds) == 1
    _edit_metadata(weights, lambda m: m["build_config"].update(change))
    with pytest.raises(ExportError, match=message):
        load_backbone(weights)
    assert len(real_builds) == 1, f"built for real before the check: {real_builds[1:]}"
