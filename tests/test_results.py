"""The typed results.json record (issue 15, defect 12), and what a run records about its data (defect 10)."""

from __future__ import annotations

import json
import logging
import re

import pytest

from pretextlab.results import SCHEMA_VERSION, ResultsError, ResultsRecord
from pretextlab.train import run
from tests.conftest import FAST_RUN

GOOD = {"status": "ok", "task": "rotation", "backbone": "convnet", "data": "synthetic", "seed": 3,
        "eval": {"linear": {"top1": 0.5}}, "pretext": {"val_acc": 0.9}, "epochs": 2, "steps": 8,
        "wall_time": {"total": 1.5}, "headline": {"metric": "linear/top1", "value": 0.5}}


def test_a_good_record_reads_back_typed():
    record = ResultsRecord.from_json(GOOD, "x/results.json")
    assert (record.ok, record.task, record.seed, record.steps, record.schema_version) == (True, "rotation", 3, 8, 1)
    assert record.to_dict()["eval"] == GOOD["eval"] and not record.untrained


@pytest.mark.parametrize("change,fragment", [
    ({"seed": [0, 1]}, "seed=[0, 1] must be an integer"),
    ({"seed": True}, "seed=true must be an integer"),
    ({"seed": "0"}, "seed='0' must be an integer"),
    ({"task": None}, "task=null must be a non-empty string"),
    ({"eval": []}, "eval=[] must be an object"),
    ({"eval": {"linear": 0.5}}, "eval="),
    ({"pretext": {"val_acc": "high"}}, "pretext="),
    ({"steps": -1}, "steps=-1 must be an integer >= 0"),
    ({"status": ""}, "status='' must be a non-empty string"),
    ({"status": 7}, "status=7"),
    ({"schema_version": "1"}, "schema_version='1' must be an integer"),
    ({"headline": {"value": "x"}}, "headline="),
])
def test_a_wrong_field_is_named_with_the_file(change, fragment):
    with pytest.raises(ResultsError) as caught:
        ResultsRecord.from_json({**GOOD, **change}, "sweep/0_rotation/results.json")
    assert str(caught.value).startswith("sweep/0_rotation/results.json: ") and fragment in str(caught.value)


def test_missing_keys_and_a_newer_schema_are_refused():
    with pytest.raises(ResultsError, match="status 'ok' but no 'task', 'backbone', 'data', 'seed', 'eval'"):
        ResultsRecord.from_json({"status": "ok"})
    with pytest.raises(ResultsError, match="no 'status'"):
        ResultsRecord.from_json({"task": "rotation"})
    with pytest.raises(ResultsError, match=f"schema {SCHEMA_VERSION + 1}; this pretextlab reads up to"):
        ResultsRecord.from_json({**GOOD, "schema_version": SCHEMA_VERSION + 1})


def test_a_failed_record_keeps_what_it_was_given():
    record = ResultsRecord.from_json({"status": "failed: seed=[1, 2] is not allowed", "task": "rotation", "seed": [1, 2]})
    assert not record.ok and record.seed == "[1, 2]" and record.task == "rotation"


TRANSFER = {**GOOD, "kind": "transfer", "data": "voc2007", "seed": 0, "eval": {"voc07_svm": {"map": 0.4}},
            "pretrained": {"path": "/runs/r", "task": "rotation", "backbone": "convnet", "data": "synthetic",
                           "seed": 3},
            "input": {"image_size": 32}}


def test_an_evaluation_record_is_typed_by_its_kind():
    """pretextlab.evaluate's records: ``kind`` says so, ``pretrained`` names the backbone evaluated."""
    record = ResultsRecord.from_json(TRANSFER, "e/results.json")
    assert record.transfer and record.kind == "transfer" and record.pretrained["seed"] == 3
    assert not ResultsRecord.from_json(GOOD).transfer and ResultsRecord.from_json(GOOD).pretrained == {}
    failed = ResultsRecord.from_json({"status": "failed: pretrained path /x does not exist", "kind": "transfer",
                                      "pretrained": {"path": "/x"}})
    assert failed.transfer and not failed.ok
    for change, fragment in [
        ({"kind": "evaluation"}, "kind='evaluation' must be absent (a pretraining job) or 'transfer'"),
        ({"pretrained": None}, "kind 'transfer' but pretrained=null is not an object"),
        ({"pretrained": {**TRANSFER["pretrained"], "path": ""}}, "pretrained.path='' must be a non-empty string"),
        ({"pretrained": {**TRANSFER["pretrained"], "seed": "3"}}, "pretrained.seed='3' must be an integer or null"),
        ({"pretrained": {**TRANSFER["pretrained"], "task": 5}}, "pretrained.task=5 must be a non-empty string"),
        ({"input": [32]}, "input=[32] must be an object"),
    ]:
        with pytest.raises(ResultsError, match=re.escape(fragment)):
            ResultsRecord.from_json({**TRANSFER, **change}, "e/results.json")


def test_reading_files(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{truncated")
    with pytest.raises(ResultsError, match=f"^{path}: not valid JSON"):
        ResultsRecord.read(path)
    path.write_text(json.dumps(GOOD))
    assert ResultsRecord.read(path).path == path
    with pytest.raises(ResultsError, match="cannot be read"):
        ResultsRecord.read(tmp_path / "missing.json")


def test_a_run_records_the_images_it_really_pretrained_on(make_config, caplog):
    # 128 training images; num_pretrain asks for more: all 128 are used, and the record says 128.
    with caplog.at_level(logging.WARNING, logger="pretextlab.data.datamodule"):
        results = run(make_config([*FAST_RUN, "data.num_pretrain=1000"], tiny=False))
    assert results["config"]["data"]["num_pretrain"] == 1000
    assert results["pretrain_images"] == 128
    assert any("num_pretrain=1000 is more than the 128 images" in r.getMessage() for r in caplog.records)
    record = ResultsRecord.read(make_config(tiny=False).paths.run_dir + "/results.json")
    assert record.pretrain_images == 128 and record.schema_version == SCHEMA_VERSION


def test_a_record_a_reader_would_refuse_is_never_written(tmp_path):
    from pretextlab.results import write_results

    path = tmp_path / "results.json"
    with pytest.raises(ResultsError, match="seed"):
        write_results(path, {"status": "ok", "task": "rotation", "backbone": "convnet", "data": "synthetic",
                             "seed": "zero", "eval": {}})
    assert not path.exists()
    with pytest.raises(ResultsError, match="options"):
        write_results(path, {"status": "failed: x", "options": {"task": 3}})
    assert not path.exists()
    record = write_results(path, {"status": "ok", "task": "rotation", "backbone": "convnet", "data": "synthetic",
                                  "seed": 0, "eval": {}, "options": {"task": "rotation", "experiment": None}})
    assert ResultsRecord.read(path).options == record.options == {"task": "rotation", "experiment": None}
