"""VOC 2007 classification: the source on a tiny tree the test writes, and the per-class SVM protocol
checked against scikit-learn and against features with a known answer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pretextlab.data.sources import DataError
from pretextlab.data.voc import VOC_CLASSES, VOC2007Source
from pretextlab.evaluation.extract import FeatureSet
from pretextlab.evaluation.voc07 import VOC07SVM, ap_sklearn, ap_voc, ap_voc07_11point, multilabel_targets
from tests.voc_tree import TEST, TRAINVAL, _private_cache, expected_targets, voc_root, write_voc_tree  # noqa: F401 (fixtures)

OFFICIAL_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
                    "tvmonitor"]


# -- the source ----------------------------------------------------------------------------------------
def test_the_source_reads_targets_difficult_flags_and_the_20_classes(voc_root):
    source = VOC2007Source(str(voc_root), image_size=32)
    assert list(source.class_names) == OFFICIAL_CLASSES and source.num_classes == 20 and source.multilabel
    train, test = source.load("train"), source.load("test")
    assert train.images.shape == (TRAINVAL, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (TEST, 3, 32, 32)
    assert train.labels.shape == (TRAINVAL, 20) and test.labels.shape == (TEST, 20)
    np.testing.assert_array_equal(train.labels.numpy(), expected_targets("trainval"))
    np.testing.assert_array_equal(test.labels.numpy(), expected_targets("test"))
    cat, dog, bird = (VOC_CLASSES.index(n) for n in ("cat", "dog", "bird"))
    assert train.labels[0, cat] == -1  # only a difficult cat: left out of "cat"
    assert train.labels[1, dog] == 1  # a difficult dog beside a plain one: present
    assert test.labels[3, bird] == -1
    assert int((train.labels.sum(1) >= 2).sum()) == TRAINVAL  # every image is multi-label
    pretrain = source.load("pretrain")  # pretraining sees the images, never the targets
    assert pretrain.labels.shape == (TRAINVAL,) and bool((pretrain.labels == -1).all())
    assert torch.equal(pretrain.images, train.images)


def test_images_are_squashed_by_default_and_decoded_once(voc_root, tmp_path):
    squashed = VOC2007Source(str(voc_root), image_size=24).load("test").images
    cropped = VOC2007Source(str(voc_root), image_size=24, resize="center_crop").load("test").images
    assert squashed.shape == cropped.shape == (TEST, 3, 24, 24) and not torch.equal(squashed, cropped)
    assert len(list((tmp_path / "cache").glob("voc2007-test-*.pt"))) == 2
    again = VOC2007Source(str(voc_root), image_size=24).load("test").images  # from the cache
    assert torch.equal(again, squashed)


def test_a_missing_or_broken_tree_is_a_clear_error(voc_root, tmp_path):
    with pytest.raises(DataError, match="no VOC 2007 tree at .*VOCdevkit/VOC2007"):
        VOC2007Source(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="val.txt does not exist"):
        VOC2007Source(str(voc_root), train_split="val").load("train")
    broken = write_voc_tree(tmp_path / "broken")
    annotation = broken / "VOCdevkit" / "VOC2007" / "Annotations" / "000004.xml"
    annotation.write_text(annotation.read_text().replace("<name>", "<name>x", 1))
    with pytest.raises(DataError, match="000004.xml: object class 'x.*' is not one of the 20 VOC classes"):
        VOC2007Source(str(broken)).load("train")


# -- average precision -----------------------------------------------------------------------------------
def test_the_three_ap_definitions_on_a_hand_computed_ranking():
    # Ranking: hit, miss, hit, miss → precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1.
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6])
    assert ap_voc(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert ap_voc07_11point(labels, scores) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)  # t <= 0.5: 1; t > 0.5: 2/3
    assert ap_sklearn(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Interpolation lifts precision: a miss before a hit costs the interpolated AP less than sklearn's.
    labels, scores = np.array([1, 0, 0, 1, 1]), np.array([5, 4, 3, 2, 1])
    assert ap_voc(labels, scores) == pytest.approx(1 / 3 + 2 / 3 * 3 / 5)
    assert ap_sklearn(labels, scores) == pytest.approx(1 / 3 * (1 + 2 / 4 + 3 / 5))
    assert math.isnan(ap_voc(np.zeros(3), np.arange(3.0)))


def test_sklearn_ap_is_scikit_learns_and_interpolated_ap_bounds_it():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        labels[0] = 1
        scores = rng.normal(size=40) + labels
        assert ap_sklearn(labels, scores) == pytest.approx(average_precision_score(labels, scores))
        assert ap_voc(labels, scores) >= ap_sklearn(labels, scores) - 1e-12


# -- the SVM protocol -------------------------------------------------------------------------------------
def _known_answer(num_classes: int = 4, train: int = 60, test: int = 40, seed: int = 0):
    """Targets in {1, 0, -1} and features where class c is (1, 0) in dimensions (2c, 2c+1) when present and
    (0, 1) when absent: every image has the same norm, so L2 normalisation keeps the classes separable
    and every AP is 1."""
    rng = np.random.default_rng(seed)
    targets = torch.from_numpy((rng.random((train + test, num_classes)) < 0.4).astype(np.int64))
    targets[: num_classes, :] = torch.eye(num_classes, dtype=torch.long)  # every class present in train
    targets[train : train + num_classes, :] = torch.eye(num_classes, dtype=torch.long)  # ... and in test
    present = (targets == 1).float()
    features = torch.stack([present, 1 - present], dim=2).flatten(1)
    features = features + 0.05 * torch.from_numpy(rng.normal(size=features.shape)).float()
    noise = torch.from_numpy(rng.normal(size=(train + test, 6))).float()
    return targets, {"signal": features, "noise": noise}, train


def _sets(targets, features, train):
    return (FeatureSet({k: v[:train] for k, v in features.items()}, targets[:train]),
            FeatureSet({k: v[train:] for k, v in features.items()}, targets[train:]))


def test_separable_classes_give_a_perfect_map_and_the_stage_is_chosen_by_cross_validation():
    targets, features, train = _known_answer()
    result = VOC07SVM(costs=[0.1, 1.0, 10.0], class_names=list("abcd")).run(*_sets(targets, features, train), 4)
    assert result["best_stage"] == "signal" and result["last_stage"] == "noise"
    assert result["map"] == pytest.approx(1.0) and set(result["per_class_ap"]) == set("abcd")
    assert all(value == pytest.approx(1.0) for value in result["map_by_metric"].values())
    assert result["per_stage"]["noise"]["map"] < 0.9
    assert result["per_stage"]["signal"]["cv_map"] > result["per_stage"]["noise"]["cv_map"]
    assert all(cost in (0.1, 1.0, 10.0) for cost in result["per_stage"]["signal"]["cost"].values())


def test_costs_and_test_ap_match_scikit_learn_done_by_hand():
    """Per class: the cost VISSL's recipe picks (cross_val_score, 3 folds, average precision) and the
    refit SVM's test AP (average_precision_score), computed here with scikit-learn directly."""
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(1)
    targets = torch.from_numpy((rng.random((90, 3)) < 0.35).astype(np.int64))
    targets[5, 0] = targets[70, 1] = -1  # difficult-only: out of training (ignore) and of scoring
    features = torch.from_numpy(rng.normal(size=(90, 8)) + 0.8 * np.pad(targets.clamp_min(0).numpy(), ((0, 0), (0, 5)))).float()
    costs = [0.01, 0.1, 1.0, 10.0]
    protocol = VOC07SVM(costs=costs, ap_metric="sklearn", class_names=["x", "y", "z"])
    result = protocol.run(*_sets(targets, {"only": features}, 60), 3)["per_stage"]["only"]

    x = features.double().numpy()
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)
    t = targets.numpy()
    for c, name in enumerate(["x", "y", "z"]):
        keep = t[:60, c] != -1
        xc, yc = x[:60][keep], np.where(t[:60, c][keep] == 1, 1, -1)

        def svm(cost: float) -> LinearSVC:
            return LinearSVC(C=cost, class_weight={1: 2.0, -1: 1.0}, dual=True, max_iter=2000, tol=1e-4,
                             random_state=0)

        cv = [cross_val_score(svm(cost), xc, yc, cv=3, scoring="average_precision").mean() for cost in costs]
        chosen = costs[int(np.argmax(cv))]
        assert result["cost"][name] == chosen
        assert result["per_class"][name]["cv_ap"] == pytest.approx(max(cv))
        scored = t[60:, c] != -1
        model = svm(chosen).fit(xc, yc)
        expected = average_precision_score(t[60:, c][scored] == 1, model.decision_function(x[60:][scored]))
        assert result["per_class_ap"][name] == pytest.approx(expected)
    assert result["per_class"]["x"]["train_negatives"] + result["per_class"]["x"]["train_positives"] == 59
    assert result["per_class"]["y"]["test_ignored"] == 1


def test_difficult_images_never_change_the_test_ap():
    targets, features, train = _known_answer(seed=3)
    targets[train + 10, 0] = -1
    base = VOC07SVM(costs=[1.0]).run(*_sets(targets, features, train), 4)
    moved = {k: v.clone() for k, v in features.items()}
    moved["signal"][train + 10] = -100.0  # whatever score the ignored image gets
    again = VOC07SVM(costs=[1.0]).run(*_sets(targets, moved, train), 4)
    assert again["per_stage"]["signal"]["per_class_ap"]["class0"] == base["per_stage"]["signal"]["per_class_ap"]["class0"]
    targets[3, 1] = -1
    ignore = VOC07SVM(costs=[1.0]).run(*_sets(targets, features, train), 4)["per_stage"]["signal"]["per_class"]["class1"]
    negative = VOC07SVM(costs=[1.0], train_difficult="negative").run(
        *_sets(targets, features, train), 4)["per_stage"]["signal"]["per_class"]["class1"]
    assert negative["train_negatives"] == ignore["train_negatives"] + 1


def test_single_labels_are_scored_one_vs_rest_and_unlabeled_images_dropped():
    labels = torch.tensor([0, 1, 2, -1, 1])
    np.testing.assert_array_equal(multilabel_targets(labels, 3),
                                  [[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1], [0, 1, 0]])
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 3, 90))
    y[:3] = torch.tensor([0, 1, 2])
    y[10] = -1
    x = torch.nn.functional.one_hot(y.clamp_min(0), 3).float() * 3 + 0.1 * torch.randn(90, 3)
    result = VOC07SVM(costs=[1.0]).run(FeatureSet({"s": x[:60]}, y[:60]), FeatureSet({"s": x[60:]}, y[60:]), 3)
    assert result["train_images"] == 59 and result["test_images"] == 30 and result["map"] == pytest.approx(1.0)


def test_a_class_too_rare_for_cross_validation_falls_back_and_says_so():
    targets, features, train = _known_answer()
    targets[:train, 2] = 0
    targets[0, 2] = 1  # a single positive: no 2-fold split possible
    result = VOC07SVM(costs=[0.1, 1.0], fallback_cost=0.5).run(*_sets(targets, features, train), 4)
    entry = result["per_stage"]["signal"]["per_class"]["class2"]
    assert entry["cost"] == 0.5 and entry["cost_chosen_by"].startswith("fallback")
    targets[:train, 3] = 0  # no positive at all: no SVM, no AP, left out of the mean
    result = VOC07SVM(costs=[1.0]).run(*_sets(targets, features, train), 4)
    assert result["per_stage"]["signal"]["per_class_ap"]["class3"] is None
    assert result["per_stage"]["signal"]["map"] is not None


def test_bad_settings_are_refused():
    for kwargs in ({"costs": []}, {"costs": [0.0]}, {"cross_val_folds": 1}, {"ap_metric": "auc"},
                   {"train_difficult": "drop"}, {"n_jobs": 0}):
        with pytest.raises(ValueError, match="voc07_svm"):
            VOC07SVM(**kwargs)  # type: ignore[arg-type]


def test_pretraining_batches_carry_no_multi_label_targets(voc_root):
    """The online probe takes single labels: VOC batches reach the task unlabeled (-1), while
    feature extraction (eval_dataloader) still sees the (N, 20) targets."""
    from pretextlab.data.datamodule import PretextDataModule

    datamodule = PretextDataModule(VOC2007Source(str(voc_root), image_size=16), batch_size=8, eval_batch_size=8)
    images, labels = next(iter(datamodule.val_dataloader()))
    assert labels.shape == (8, 20)
    prepared, batch_labels = datamodule.on_after_batch_transfer((images, labels), 0)
    assert prepared.dtype == torch.float32 and batch_labels.tolist() == [-1] * 8
    assert next(iter(datamodule.eval_dataloader("test")))[1].shape[1] == 20
