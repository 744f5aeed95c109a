"""pretextlab as an installed library: the built wheel in a fresh virtual environment outside the
repository, used from an empty project folder that holds the user's own config folder and task.

The fresh environment gets pretextlab from the wheel alone; its dependencies (torch, Lightning, ...)
come from the development environment through a path entry, because nothing can be downloaded here.
That path entry does not run the development environment's ``.pth`` hooks, so the checkout's
``src/`` (the editable install) is invisible to it: the test checks which ``pretextlab`` it imports.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.user_project import write_user_project

#: A whole job in seconds, with the default (CSV) logger.
TINY = [
    "data.source.num_train=128", "data.source.num_test=64", "data.batch_size=64", "data.eval_batch_size=64",
    "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "eval.protocols.linear.epochs=2", "eval.protocols.linear.lrs=[0.01]", "eval.protocols.linear.weight_decays=[0.0]",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the built wheel of this checkout; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("installed")
    # Built from a copy of what the wheel is made of, so that setuptools' build/ never lands in the checkout.
    source = root / "source"
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("pretextlab-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Dependencies from the development environment, as a plain path (its .pth hooks do not run).
    (Path(site) / "_pretextlab_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv / "bin"


def _project(tmp_path: Path) -> Path:
    """An empty project folder with the user's module and config folder, outside the repository."""
    return write_user_project(tmp_path / "my_project")


def _run(bin_dir: Path, project: Path, *arguments: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PRETEXTLAB_SRC", "PRETEXTLAB_SWEEP_ID", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "pretextlab"), *arguments], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_ships_the_configs_and_the_command_composes_a_user_task_from_an_empty_folder(installed, tmp_path):
    python = installed / "python"
    where = subprocess.run([str(python), "-c", "import pretextlab, pretextlab.paths as p; "
                            "print(pretextlab.__file__); print(p.config_dir()); print(p.source_checkout())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split("\n")
    assert where[0].startswith(str(installed.parent)), f"imported pretextlab from {where[0]}, not the wheel"
    assert (Path(where[1]) / "train.yaml").is_file() and (Path(where[1]) / "task" / "rotation.yaml").is_file()
    assert where[2] == "None"  # an installed release records no pretextlab checkout commit

    project = _project(tmp_path)
    listed = _run(installed, project, "--help")
    assert listed.returncode == 0 and "sweep" in listed.stdout and "evaluate" in listed.stdout
    composed = _run(installed, project, "train", "-cd", "my_configs", "task=toyflip", "--cfg", "job", "--resolve")
    assert composed.returncode == 0, composed.stderr
    assert "_target_: toy_flip_task.ToyFlipTask" in composed.stdout and "momentum: 0.9" in composed.stdout
    # Outputs go under the folder the command runs from.
    assert f"{project}/outputs" in composed.stdout
    unknown = _run(installed, project, "trian")
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "pretextlab: error: unknown command 'trian'; did you mean `pretextlab train`? "
        "commands: train, sweep, table, evaluate, export, audit, select"]
    missing = _run(installed, project, "train", "task=toyflip")  # the user's folder was not given
    assert missing.returncode == 2 and "could not find 'task/toyflip'" in missing.stderr
    assert not (project / "outputs").exists()


@pytest.mark.slow
def test_a_user_task_trains_sweeps_against_a_built_in_task_and_lands_in_the_table(installed, tmp_path):
    project = _project(tmp_path)
    trained = _run(installed, project, "train", "-cd", "my_configs", "task=toyflip", *TINY)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = (project / "outputs" / "runs").iterdir()
    assert (run_dir / "results.json").is_file() and (run_dir / "csv").is_dir()  # the default logger wrote

    swept = _run(installed, project, "sweep", "-cd", "my_configs", "--tasks", "toyflip,rotation", "--vit-tasks", "",
                 *TINY)
    assert swept.returncode == 0, swept.stderr[-3000:]
    (sweep_dir,) = (project / "outputs" / "sweeps").iterdir()
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0_none", "1_toyflip", "2_rotation"]

    (sweep_dir / "table.csv").unlink()
    tabled = _run(installed, project, "table", str(sweep_dir))
    assert tabled.returncode == 0, tabled.stderr
    with open(sweep_dir / "table.csv", newline="") as handle:
        rows = {row["task"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"none", "toyflip", "rotation"}, rows.keys()
    assert all(rows[name]["status"] == "ok" for name in rows), rows
    assert rows["toyflip"]["task_label"].startswith("mirror flip ("), rows["toyflip"]  # the class's own label
    assert list(rows) == ["none", "toyflip", "rotation"]  # its declared place: before rotation
