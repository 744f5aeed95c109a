from pretextlab.train import run


def test_rotation_tiny_run_writes_results(make_config, tmp_path):
    results = run(make_config(["task=rotation"]))
    assert results["status"] == "ok"
    assert (tmp_path / "run" / "results.json").exists()
