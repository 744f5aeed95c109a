"""What the command line writes, and where it cannot (issue 15, defects 11 and 15).

- An output directory that cannot be written gives pretextlab's one line (exit 2) before Hydra
  creates anything, for a run and for a sweep.
- A decode cache that cannot be written (full disk) costs a warning, never the run.
- A credential given on the command line does not stay in the ``.hydra/`` files or ``multirun.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TOKEN = "tok-5e6f7a8b9c0d1e2f"  # under a credential-like key on the command line
ENV_SECRET = "aws-3c4d5e6f7a8b9c0d"  # in a credential-like environment variable


def _cli(args: list[str], cwd: Path, module: str = "pretextlab.train") -> subprocess.Popen[str]:
    env = dict(os.environ, PRETEXTLAB_CACHE=str(cwd / "cache"), HYDRA_FULL_ERROR="0",
               AWS_SECRET_ACCESS_KEY=ENV_SECRET)
    env.pop("PRETEXTLAB_TRACEBACK", None)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_an_unwritable_output_directory_is_one_line_before_hydra_writes(tmp_path):
    """Several command lines at once (the interpreter start-up dominates their time)."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    processes = {
        "run under a file": _cli(["logger=none", f"hydra.run.dir={in_the_way / 'run'}"], tmp_path),
        "sweep under a file": _cli(["-m", "logger=none", f"hydra.sweep.dir={in_the_way / 'sweep'}"], tmp_path),
    }
    if os.geteuid() != 0:  # root writes through permission bits
        processes["run in a read-only folder"] = _cli(["logger=none", f"hydra.run.dir={read_only / 'run'}"], tmp_path)
    results = {name: (process.wait(timeout=600), process.stderr.read()) for name, process in processes.items()}
    read_only.chmod(0o755)
    for name, (code, err) in results.items():
        key = "hydra.sweep.dir" if name.startswith("sweep") else "hydra.run.dir"
        assert code == 2, (name, err)
        assert err.splitlines()[0].startswith("pretextlab: error: output directory "), (name, err)
        assert f"choose another with {key}=..." in err.splitlines()[0], (name, err)
        assert "Traceback" not in err, (name, err)
    assert not (read_only / "run").exists()


def test_command_line_credentials_do_not_stay_in_hydra_files(tmp_path):
    secrets = [f"+extra.api_token={TOKEN}", "+extra.notes=${oc.env:AWS_SECRET_ACCESS_KEY}",
               f"+extra.note_{ENV_SECRET[:3]}={ENV_SECRET}"]
    # .hydra/ is written by pretextlab once a job runs (a refused or rejected one leaves none): it must be clean.
    quick = ["trainer.max_epochs=1", "data.source.num_train=64", "data.source.num_test=32", "data.batch_size=32",
             "data.eval_batch_size=32", "eval=none", "task.panel_images=0", "trainer.enable_progress_bar=false"]
    run_dir, sweep_dir = tmp_path / "secret-run", tmp_path / "secret-sweep"
    single = _cli([*secrets, *quick, f"hydra.run.dir={run_dir}"], tmp_path)
    sweep = _cli(["-m", *secrets, *quick, "seed=0,1", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    (code, err), (sweep_code, sweep_err) = [(p.wait(timeout=600), p.stderr.read()) for p in (single, sweep)]

    assert code == 0, err
    # The options the job was composed from are part of its results record (and of its row's identity).
    assert json.loads((run_dir / "results.json").read_text())["options"] == {
        "task": "rotation", "backbone": "convnet", "data": "synthetic", "eval": "none", "experiment": None}
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert "+extra.api_token=<redacted>" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "api_token: <redacted>" in (run_dir / ".hydra" / "config.yaml").read_text()
    # An interpolation is no credential: kept as given (it is resolved only in memory, then scrubbed).
    assert "${oc.env:AWS_SECRET_ACCESS_KEY}" in (run_dir / ".hydra" / "overrides.yaml").read_text()

    assert sweep_code == 0, sweep_err
    assert (sweep_dir / "multirun.yaml").is_file() and len(list(sweep_dir.glob("*/.hydra/hydra.yaml"))) == 2
    for root in (run_dir, sweep_dir):
        for secret in (TOKEN, ENV_SECRET):
            assert _files_holding(root, secret) == [], f"{secret} written to {_files_holding(root, secret)}"


def _image_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(3):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{index}.png")


def test_a_full_disk_under_the_decode_cache_costs_a_warning(tmp_path, monkeypatch, caplog):
    from pretextlab.data import ImageFolderSource

    _image_tree(tmp_path / "images")
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRETEXTLAB_CACHE", str(cache))
    real_save = torch.save

    def save_onto_a_full_disk(obj, target, *args, **kwargs):
        # What torch.save does when the disk fills up: part of the file, then a RuntimeError.
        real_save(obj, target, *args, **kwargs)
        with open(target, "r+b") as handle:
            handle.truncate(100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 960 vs 854")

    monkeypatch.setattr(torch, "save", save_onto_a_full_disk)
    with caplog.at_level(logging.WARNING, logger="pretextlab.data.image_folder_source"):
        split = ImageFolderSource(str(tmp_path / "images"), image_size=8).load("train")
    assert tuple(split.images.shape) == (6, 3, 8, 8)
    assert any("could not cache decoded images" in r.getMessage() and "unexpected pos" in r.getMessage()
               for r in caplog.records)
    assert list(cache.iterdir()) == []  # no partial cache file left to be read next time


@pytest.mark.parametrize("override,expected", [
    ("+extra.api_token=abc", "+extra.api_token=<redacted>"),
    ("++logger.wandb.api_key=abc=def", "++logger.wandb.api_key=<redacted>"),
    ("extra.PASSWORD=1234", "extra.PASSWORD=<redacted>"),
    ("extra.secret_things=[a,b]", "extra.secret_things=<redacted>"),
    ("task=rotation", "task=rotation"),
    ("+notes=hello", "+notes=hello"),
    ("--multirun", "--multirun"),
])
def test_scrub_override(override, expected):
    from pretextlab.redaction import scrub_override

    assert scrub_override(override) == expected


def test_scrub_override_dirname_keeps_commas_inside_values():
    from pretextlab.hydra_callbacks import scrub_override_dirname

    assert scrub_override_dirname("+extra.api_token=[a,b],eval.stages=[x,y],seed=1") == \
        "+extra.api_token=<redacted>,eval.stages=[x,y],seed=1"
    assert scrub_override_dirname("task=rotation,trainer.max_epochs=2") == "task=rotation,trainer.max_epochs=2"


def test_scrub_hydra_files_leaves_clean_files_untouched(tmp_path):
    from pretextlab.hydra_callbacks import scrub_hydra_files

    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "overrides.yaml").write_text("- task=rotation\n- +extra.password=12345678\n")
    (hydra_dir / "config.yaml").write_text("seed: 0\nextra:\n  password: 12345678\nnote: ${oc.env:HOME}\n")
    (hydra_dir / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n")
    before = (hydra_dir / "hydra.yaml").stat().st_mtime_ns
    assert sorted(p.name for p in scrub_hydra_files(hydra_dir)) == ["config.yaml", "overrides.yaml"]
    assert "12345678" not in (hydra_dir / "overrides.yaml").read_text() + (hydra_dir / "config.yaml").read_text()
    assert "${oc.env:HOME}" in (hydra_dir / "config.yaml").read_text()
    assert (hydra_dir / "hydra.yaml").stat().st_mtime_ns == before
    assert scrub_hydra_files(hydra_dir) == []  # nothing left to scrub
