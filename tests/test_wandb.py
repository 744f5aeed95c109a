"""W&B logging without an account or network: offline files in the run directory, never a hang.

Every test runs with no API key, a fresh ``HOME`` (so no ``~/.netrc`` or W&B settings) and no
``WANDB_MODE``: the offline fallback is what is under test, not an environment that forces it.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pretextlab import loggers as loggers_module
from pretextlab.redaction import REDACTED
from pretextlab.tasks import RotationTask
from pretextlab.train import run

wandb = pytest.importorskip("wandb")

SWEEP_ID = "sweep-test-wandb-7f3a"
#: A credential-looking environment variable; its value must reach no file W&B writes.
FAKE_SECRET_ENV = "PRETEXTLAB_TEST_TOKEN"
FAKE_SECRET = "tok-9d8c7b6a5f4e3d2c1b0a"

#: Two training steps, a 64-image test split, a one-lr linear probe: seconds per run.
TINY_WANDB = [
    "logger=wandb",
    "task=rotation",
    "data.source.num_train=128",
    "data.source.num_test=64",
    "data.batch_size=64",
    "data.eval_batch_size=64",
    "task.panel_images=4",
]


@pytest.fixture
def no_wandb_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_CONFIG_DIR",
                 "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("PRETEXTLAB_SWEEP_ID", SWEEP_ID)
    monkeypatch.setenv(FAKE_SECRET_ENV, FAKE_SECRET)
    yield home
    loggers_module.abort_open_runs()  # a failing test must not leave a run for the next one


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


# -- reading an offline run -----------------------------------------------------------------------
# wandb >= 0.19 (wandb-core) keeps an offline run only in its transaction log ``run-<id>.wandb``:
# no files/wandb-summary.json or files/config.yaml until `wandb sync`. The log is LevelDB's log
# format (32 KiB blocks; records with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST)
# after a 7-byte file header, each record a serialised ``wandb_internal_pb2.Record``.
_BLOCK_SIZE = 32768
_RECORD_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _log_records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B transaction log"
    position, pending = 7, b""
    while position + _RECORD_HEADER.size <= len(data):
        left_in_block = _BLOCK_SIZE - position % _BLOCK_SIZE
        if left_in_block < _RECORD_HEADER.size:  # the block's zero padding
            position += left_in_block
            continue
        _checksum, length, kind = _RECORD_HEADER.unpack_from(data, position)
        if kind == 0 and length == 0:
            position += left_in_block
            continue
        payload = data[position + _RECORD_HEADER.size: position + _RECORD_HEADER.size + length]
        position += _RECORD_HEADER.size + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""


@dataclass
class OfflineRun:
    config: dict[str, Any]
    summary: dict[str, Any]
    group: str
    tags: list[str]
    exit_code: int | None


def read_offline_run(offline_run: Path) -> OfflineRun:
    """Config, summary, group, tags and exit code of an offline run, as `wandb sync` would upload them."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log_file,) = offline_run.glob("run-*.wandb")
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    group, tags, exit_code = "", [], None

    def apply(target: dict[str, Any], items: Any) -> None:
        for item in items:  # an item has a key, or a nested key (["panels/rotations", "_type"])
            *parents, last = [item.key] if item.key else list(item.nested_key)
            node = target
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = json.loads(item.value_json)

    for raw in _log_records(log_file):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group, tags = record.run.run_group, list(record.run.tags)
            apply(config, record.run.config.update)
        elif kind == "config":
            apply(config, record.config.update)
        elif kind == "summary":
            apply(summary, record.summary.update)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    # W&B stores each config entry as {"value": ...} or plainly, by version: unwrap.
    config = {k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v for k, v in config.items()}
    return OfflineRun(config, summary, group, tags, exit_code)


@pytest.mark.timeout(180)
def test_wandb_without_key_runs_offline_with_metrics_config_group_tags_and_panels(make_config, tmp_path,
                                                                                  no_wandb_account):
    assert loggers_module.wandb_mode("auto") == "offline"
    run_dir = tmp_path / "run"
    # A top-level key whose value is the credential: resolved_config redacts it, and so must W&B's config.
    results = run(make_config(TINY_WANDB + [f"+extra.notes=${{oc.env:{FAKE_SECRET_ENV}}}"]))
    assert results["status"] == "ok"

    runs = _offline_runs(run_dir)
    assert len(runs) == 1, f"expected one offline run under {run_dir / 'wandb'}, found {runs}"
    offline = runs[0]
    stored = read_offline_run(offline)
    assert stored.exit_code == 0

    # Metrics: the pretext and online-probe values Lightning logged, the downstream results train.py sends.
    summary = stored.summary
    assert summary["pretext/val_acc"] == pytest.approx(results["pretext"]["val_acc"], abs=1e-6)
    assert summary["pretext/train_loss_epoch"] == pytest.approx(results["pretext"]["train_loss"], abs=1e-6)
    assert summary["probe/val_acc"] == pytest.approx(results["online_probe"]["val_acc"], abs=1e-6)
    assert summary["eval/linear/top1"] == pytest.approx(results["eval"]["linear"]["top1"], abs=1e-6)
    assert summary["headline"] == pytest.approx(results["headline"]["value"], abs=1e-6)

    # The resolved config (not just the task's hyper-parameters), with the credential redacted.
    config = stored.config
    assert config["task"]["name"] == "rotation"
    assert config["backbone"]["name"] == "convnet"
    assert config["data"]["source"]["num_train"] == 128
    assert config["trainer"]["max_epochs"] == 1
    assert config["eval"]["protocols"]["linear"]["epochs"] == 3
    assert config["seed"] == 0
    assert config["extra"]["notes"] == REDACTED

    # Every job of a sweep in one group, tagged for filtering.
    assert stored.group == SWEEP_ID
    assert set(stored.tags) == {"task:rotation", "backbone:convnet", "data:synthetic"}

    # The image panel reached W&B as a media file, referenced from the summary.
    panel = summary["panels/rotations"]
    assert panel["_type"] == "images/separated" and panel["count"] == 1
    (filename,) = panel["filenames"]
    assert filename.startswith("media/images/panels/rotations_") and filename.endswith(".png")
    assert (offline / "files" / filename).stat().st_size > 0

    # No file anywhere in the run directory holds the credential.
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and FAKE_SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the credential was written to {leaks}"


@pytest.mark.timeout(180)
def test_a_failed_job_closes_its_run_and_the_next_job_gets_its_own(make_config, tmp_path, no_wandb_account,
                                                                  monkeypatch):
    """A multirun runs its jobs in one process: a crashed job's W&B run must not swallow the next job."""
    original = RotationTask.pretext_step

    def crash_on_second_step(self, images, labels):
        if self.global_step >= 1:
            raise RuntimeError("simulated crash")
        return original(self, images, labels)

    quick = TINY_WANDB + ["eval=none", "task.panel_images=0"]
    monkeypatch.setattr(RotationTask, "pretext_step", crash_on_second_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_config(quick, run_dir=tmp_path / "failed"))
    monkeypatch.setattr(RotationTask, "pretext_step", original)
    assert run(make_config(quick + ["seed=1"], run_dir=tmp_path / "next"))["status"] == "ok"

    (failed,), (following,) = _offline_runs(tmp_path / "failed"), _offline_runs(tmp_path / "next")
    assert failed.name.split("-")[-1] != following.name.split("-")[-1]
    crashed, finished = read_offline_run(failed), read_offline_run(following)
    assert crashed.exit_code == 1
    assert finished.exit_code == 0
    assert crashed.config["seed"] == 0 and finished.config["seed"] == 1
    assert finished.summary["progress/epochs"] == 1
    assert "progress/epochs" not in crashed.summary  # the crash came before the first epoch ended


def _listening_socket() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server


@pytest.mark.timeout(60)
def test_a_key_without_a_reachable_server_falls_back_to_offline_quickly(no_wandb_account, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    # Bind and close: a local port that is certainly closed, so the probe is refused, not timed out.
    closed = _listening_socket()
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    assert loggers_module.wandb_mode("auto") == "offline"
    assert time.perf_counter() - started < loggers_module.REACHABILITY_TIMEOUT_S + 1

    server = _listening_socket()  # the same check against a server that answers: online
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert loggers_module.wandb_mode("auto") == "online"
    finally:
        server.close()
    monkeypatch.delenv("WANDB_API_KEY")
    assert loggers_module.wandb_mode("auto") == "offline"  # no key: offline without asking the server


def test_config_sent_to_wandb_is_scrubbed(no_wandb_account):
    params = {"logger": {"wandb": {"api_key": "abcdefgh12345"}}, "note": f"uses {FAKE_SECRET} here",
              "lrs": [0.1, FAKE_SECRET], "seed": 3}
    clean = loggers_module.scrub(params)
    assert clean == {"logger": {"wandb": {"api_key": REDACTED}}, "note": f"uses {REDACTED} here",
                     "lrs": [0.1, REDACTED], "seed": 3}


def test_flat_metrics_holds_downstream_numbers_only():
    results = {"pretext": {"val_acc": 0.9}, "eval": {"linear": {"top1": 0.5, "best_stage": "block2",
                                                                "per_stage": {"block2": {"top1": 0.5}}}},
               "headline": {"metric": "linear/top1", "value": 0.5}, "wall_time": {"total": 12.0}}
    assert loggers_module.flat_metrics(results) == {
        "eval/linear/top1": 0.5, "eval/linear/per_stage/block2/top1": 0.5, "headline": 0.5, "wall_time/total": 12.0}


@pytest.mark.timeout(300)
def test_credentials_in_wandb_fields_and_on_the_command_line_reach_no_wandb_file(make_config, tmp_path,
                                                                                 no_wandb_account, monkeypatch):
    """Issue 15, defect 15: notes, tags, name and the recorded command line are scrubbed too, not only the config."""
    token = "tok-0a1b2c3d4e5f6a7b"
    # W&B records the process's command line with the run; a sweep passes overrides there as given.
    monkeypatch.setattr("sys.argv", ["pretextlab/train.py", "task=rotation", f"+extra.api_token={token}",
                                     f"+note=${{oc.env:{FAKE_SECRET_ENV}}}"])
    results = run(make_config(TINY_WANDB + [
        "eval=none", "task.panel_images=0",
        f"+logger.wandb.notes=run by ${{oc.env:{FAKE_SECRET_ENV}}}",
        f"+logger.wandb.name=job-${{oc.env:{FAKE_SECRET_ENV}}}",
        f"logger.wandb.tags=[a,'${{oc.env:{FAKE_SECRET_ENV}}}']",
        f"+extra.api_token={token}",
    ]))
    assert results["status"] == "ok" and results["config"]["extra"]["api_token"] == REDACTED
    run_dir = tmp_path / "run"
    (offline,) = _offline_runs(run_dir)
    stored = read_offline_run(offline)
    assert stored.tags == ["a", REDACTED] and stored.config["extra"]["api_token"] == REDACTED
    for secret in (FAKE_SECRET, token):
        leaks = [p for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not leaks, f"{secret} was written to {leaks}"
