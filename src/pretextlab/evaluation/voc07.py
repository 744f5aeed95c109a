"""VOC07 classification by linear SVMs on frozen features (Goyal et al. 2019; VISSL's VOC07 benchmark).

For every stage: the pooled features are L2-normalised, then for every class one linear SVM
(scikit-learn's ``LinearSVC``: squared hinge, L2 penalty, positives weighted 2:1, liblinear's dual
solver with at most 2,000 iterations, as VISSL) is trained on trainval. Its cost ``C`` is chosen per class from a grid by k-fold cross-validation on trainval
(scikit-learn's average precision on the held-out folds, stratified, unshuffled folds), and the SVM
refit on all of trainval with that cost scores the test images. Test AP per class, mean over the
classes = mAP. The stage reported as "best" is the one with the highest cross-validated mAP, so
no test number chooses anything (VISSL reports every layer; papers quote the best one).

Targets are ``(N, C)`` in {1, 0, -1}: present, absent, and "only difficult instances" — the last
are left out of that class's scoring always, and of its training by default
(``train_difficult="ignore"``; ``"negative"`` trains them as negatives, which is what VISSL's
``SVMTrainer`` ends up doing since it maps 0 → -1 only after -1 already meant "ignore").
Single-label data (``(N,)`` labels) is scored one-vs-rest; ``-1`` (unlabeled) rows are dropped.

The AP on test (``ap_metric``):

- ``"voc"`` (default): the area under the interpolated precision-recall curve, every recall step
  counted (precision made monotone from the right, summed over the points where recall changes).
  This is the ``calculate_ap`` of VISSL's ``svm_utils/evaluate.py`` and of Goyal et al.'s benchmark,
  i.e. what their published VOC07 numbers mean, and the VOC devkit's rule from 2010 on.
- ``"voc07_11point"``: the VOC 2007 devkit's mean of the interpolated precision at recall
  0, 0.1, …, 1.
- ``"sklearn"``: scikit-learn's ``average_precision_score`` (step-wise, not interpolated).

All three are reported (``map_by_metric``); ``map`` and ``per_class_ap`` use ``ap_metric``.

Cost: classes × costs × (folds + 1) SVM fits per stage (3,520 for VOC07 with VISSL's grid and four
stages). Large costs often stop at ``max_iter`` in the dual (counted as ``unconverged_fits``, as
VISSL's runs do); ``dual=False`` solves the same problem in the primal, which converges in a few
Newton steps and is much faster when images outnumber feature dimensions. ``n_jobs`` fits classes
in parallel threads.
Ties in scores count image by image (stable order), as in VISSL.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pretextlab.evaluation.extract import FeatureSet

log = logging.getLogger(__name__)

#: VISSL's VOC07 cost grid (configs/.../voc07/eval_resnet_8gpu_transfer_voc07_svm.yaml).
VISSL_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
AP_METRICS = ("voc", "voc07_11point", "sklearn")
TRAIN_DIFFICULT = ("ignore", "negative")


# -- average precision ----------------------------------------------------------------------------
def _precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each image, images by decreasing score (stable for ties)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = (np.asarray(labels)[order] > 0).astype(np.float64)
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = true_positives / max(hits.sum(), 1.0)
    return precision, recall


def ap_voc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve over every recall step (VISSL, VOC ≥ 2010)."""
    if not (np.asarray(labels) > 0).any():
        return math.nan
    precision, recall = _precision_recall(labels, scores)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * envelope).sum())


def ap_voc07_11point(labels: np.ndarray, scores: np.ndarray) -> float:
    """The VOC 2007 devkit's AP: mean of the best precision at recall >= t, t = 0, 0.1, …, 1."""
    if not (np.asarray(labels) > 0).any():
        return math.nan
    precision, recall = _precision_recall(labels, scores)
    points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def ap_sklearn(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    if not (np.asarray(labels) > 0).any():
        return math.nan
    return float(average_precision_score(np.asarray(labels) > 0, scores))


AP_FUNCTIONS = {"voc": ap_voc, "voc07_11point": ap_voc07_11point, "sklearn": ap_sklearn}


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


# -- targets --------------------------------------------------------------------------------------
def multilabel_targets(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """``(N, C)`` targets in {1, 0, -1}: multi-label targets as they are, single labels one-vs-rest
    (an unlabeled ``-1`` image becomes a row of -1: left out of every class)."""
    array = labels.cpu().numpy().astype(np.int64)
    if array.ndim == 2:
        if array.shape[1] != num_classes:
            raise ValueError(f"multi-label targets have {array.shape[1]} columns, expected {num_classes} classes")
        if not np.isin(array, (-1, 0, 1)).all():
            raise ValueError("multi-label targets must hold 1 (present), 0 (absent) or -1 (ignored) only")
        return array
    if array.ndim != 1:
        raise ValueError(f"labels must be (N,) or (N, C), got shape {tuple(array.shape)}")
    targets = np.zeros((len(array), num_classes), dtype=np.int64)
    labelled = array >= 0
    targets[np.flatnonzero(labelled), array[labelled]] = 1
    targets[~labelled] = -1
    return targets


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (+1e-5, as VISSL)."""
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-5)


# -- the protocol ---------------------------------------------------------------------------------
class VOC07SVM:
    """The ``voc07_svm`` protocol: per-class linear SVMs on every stage, cost by k-fold CV, test mAP."""

    name = "voc07_svm"
    #: Takes ``(N, C)`` multi-label targets (and single labels, one-vs-rest).
    multilabel = True

    def __init__(
        self,
        costs: Sequence[float] = VISSL_COSTS,
        cross_val_folds: int = 3,
        normalize: bool = True,
        positive_weight: float = 2.0,
        max_iter: int = 2000,
        tol: float = 1e-4,
        dual: bool = True,
        ap_metric: str = "voc",
        train_difficult: str = "ignore",
        fallback_cost: float = 1.0,
        class_names: Sequence[str] | None = None,
        n_jobs: int = 1,
        seed: int = 0,
    ) -> None:
        costs = [float(c) for c in costs]
        if not costs or any(c <= 0 for c in costs):
            raise ValueError(f"eval voc07_svm costs must list at least one value > 0, got {costs}")
        if cross_val_folds < 2:
            raise ValueError(f"eval voc07_svm cross_val_folds must be >= 2, got {cross_val_folds}")
        if ap_metric not in AP_METRICS:
            raise ValueError(f"eval voc07_svm ap_metric must be one of {list(AP_METRICS)}, got {ap_metric!r}")
        if train_difficult not in TRAIN_DIFFICULT:
            raise ValueError(f"eval voc07_svm train_difficult must be one of {list(TRAIN_DIFFICULT)}, "
                             f"got {train_difficult!r}")
        if n_jobs < 1:
            raise ValueError(f"eval voc07_svm n_jobs must be >= 1, got {n_jobs}")
        if positive_weight <= 0 or fallback_cost <= 0 or max_iter < 1 or tol <= 0:
            raise ValueError("eval voc07_svm needs positive_weight > 0, fallback_cost > 0, max_iter >= 1, tol > 0")
        self.costs = costs
        self.cross_val_folds = cross_val_folds
        self.normalize = normalize
        self.positive_weight = positive_weight
        self.max_iter = max_iter
        self.tol = tol
        self.dual = dual
        self.ap_metric = ap_metric
        self.train_difficult = train_difficult
        self.fallback_cost = fallback_cost
        self.class_names = list(class_names) if class_names is not None else None
        self.n_jobs = n_jobs
        self.seed = seed
        self._unconverged = 0
        self._fits = 0
        self._lock = threading.Lock()

    def _svm(self, cost: float) -> Any:
        from sklearn.svm import LinearSVC

        return LinearSVC(C=cost, class_weight={1: self.positive_weight, -1: 1.0}, loss="squared_hinge",
                         penalty="l2", dual=self.dual, tol=self.tol, max_iter=self.max_iter, random_state=self.seed)

    def _fit(self, model: Any, x: np.ndarray, y: np.ndarray) -> Any:
        model.fit(x, y)
        with self._lock:
            self._fits += 1
            if int(np.max(model.n_iter_)) >= self.max_iter:  # liblinear stopped at max_iter: not converged
                self._unconverged += 1
        return model

    def cross_validate(self, x: np.ndarray, y: np.ndarray) -> tuple[list[float] | None, int]:
        """Mean held-out AP (scikit-learn's) of every cost, or None when a class has too few
        positives or negatives for ``min(cross_val_folds, …) >= 2`` stratified folds; the folds used."""
        from sklearn.metrics import average_precision_score
        from sklearn.model_selection import StratifiedKFold

        folds = min(self.cross_val_folds, int((y == 1).sum()), int((y == -1).sum()))
        if folds < 2:
            return None, folds
        splits = list(StratifiedKFold(n_splits=folds).split(x, y))
        scores = []
        for cost in self.costs:
            fold_ap = []
            for fit_index, held_index in splits:
                model = self._fit(self._svm(cost), x[fit_index], y[fit_index])
                fold_ap.append(float(average_precision_score(y[held_index] == 1,
                                                             model.decision_function(x[held_index]))))
            scores.append(float(np.mean(fold_ap)))
        return scores, folds

    def _fit_class(self, train_x: np.ndarray, column: np.ndarray, test_x: np.ndarray,
                   test_column: np.ndarray) -> dict[str, Any]:
        """One class of one stage: its cost by CV on trainval, the refit SVM's test AP under every metric."""
        keep = column != -1 if self.train_difficult == "ignore" else np.ones(len(column), dtype=bool)
        x, y = train_x[keep], np.where(column[keep] == 1, 1, -1)
        test_keep = test_column != -1
        entry: dict[str, Any] = {"train_positives": int((y == 1).sum()), "train_negatives": int((y == -1).sum()),
                                 "test_positives": int((test_column[test_keep] == 1).sum()),
                                 "test_ignored": int((~test_keep).sum())}
        if entry["train_positives"] == 0 or entry["train_negatives"] == 0:
            entry.update({"cost": None, "cost_chosen_by": "none: trainval lacks positives or negatives",
                          "cv_ap": None, **{f"ap_{m}": math.nan for m in AP_METRICS}})
            return entry
        cv_scores, folds = self.cross_validate(x, y)
        if cv_scores is None:
            cost, chosen_by, cv_ap = (self.fallback_cost,
                                      f"fallback: too few positives/negatives for {self.cross_val_folds}-fold CV", None)
        else:
            best = int(np.argmax(cv_scores))  # first maximum: ties keep the grid's order
            cost, chosen_by, cv_ap = self.costs[best], f"{folds}-fold CV", cv_scores[best]
        model = self._fit(self._svm(cost), x, y)
        scores = model.decision_function(test_x[test_keep])
        labels = test_column[test_keep]
        entry.update({"cost": cost, "cost_chosen_by": chosen_by, "cv_ap": cv_ap, "cv_ap_by_cost": cv_scores,
                      **{f"ap_{m}": fn(labels, scores) for m, fn in AP_FUNCTIONS.items()}})
        return entry

    def fit_stage(self, train_x: np.ndarray, train_t: np.ndarray, test_x: np.ndarray, test_t: np.ndarray,
                  names: list[str]) -> dict[str, Any]:
        """One stage: every class (``n_jobs`` at a time, in threads: liblinear releases the GIL)."""
        if self.normalize:
            train_x, test_x = l2_normalise(train_x), l2_normalise(test_x)
        with ThreadPoolExecutor(max_workers=self.n_jobs) as pool:
            entries = list(pool.map(lambda c: self._fit_class(train_x, train_t[:, c], test_x, test_t[:, c]),
                                    range(len(names))))
        per_class = dict(zip(names, entries, strict=True))
        map_by_metric = {m: _nanmean([per_class[n][f"ap_{m}"] for n in names]) for m in AP_METRICS}
        cv_values = [per_class[n]["cv_ap"] for n in names if per_class[n]["cv_ap"] is not None]
        return {
            "map": map_by_metric[self.ap_metric],
            "map_by_metric": map_by_metric,
            "cv_map": float(np.mean(cv_values)) if cv_values else None,
            "per_class_ap": {n: per_class[n][f"ap_{self.ap_metric}"] for n in names},
            "cost": {n: per_class[n]["cost"] for n in names},
            "classes_without_test_positives": [n for n in names if math.isnan(per_class[n][f"ap_{self.ap_metric}"])],
            "per_class": per_class,
        }

    def run(self, train: FeatureSet, test: FeatureSet, num_classes: int) -> dict[str, Any]:
        start = time.perf_counter()
        self._unconverged = self._fits = 0
        names = self.class_names or [f"class{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"eval voc07_svm class_names lists {len(names)} names for {num_classes} classes")
        train_t, test_t = multilabel_targets(train.labels, num_classes), multilabel_targets(test.labels, num_classes)
        train_rows = (train_t != -1).any(axis=1)  # unlabeled images (single-label -1) carry no target
        test_rows = (test_t != -1).any(axis=1)
        if not train_rows.any():
            raise ValueError("the VOC07 SVMs need labelled training images, but every train target is -1")
        from sklearn.exceptions import ConvergenceWarning

        per_stage: dict[str, dict[str, Any]] = {}
        with warnings.catch_warnings():
            # Counted instead (unconverged_fits): large costs often stop at max_iter, as in VISSL.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for stage in train.features:
                per_stage[stage] = self.fit_stage(
                    train.features[stage][torch.from_numpy(train_rows)].double().numpy(), train_t[train_rows],
                    test.features[stage][torch.from_numpy(test_rows)].double().numpy(), test_t[test_rows], names)
            log.info("VOC07 SVM %s: mAP %.4f (%s; CV mAP %s)", stage, per_stage[stage]["map"], self.ap_metric,
                     per_stage[stage]["cv_map"])
        stages = list(per_stage)
        last = stages[-1]
        with_cv = [s for s in stages if per_stage[s]["cv_map"] is not None]
        best = max(with_cv, key=lambda s: per_stage[s]["cv_map"]) if len(with_cv) == len(stages) else last
        return _finite_or_none({
            "map": per_stage[best]["map"],
            "map_by_metric": per_stage[best]["map_by_metric"],
            "per_class_ap": per_stage[best]["per_class_ap"],
            "best_stage": best,
            "best_stage_chosen_by": "cross-validated mAP on trainval" if best in with_cv and len(with_cv) == len(stages)
            else "last stage (no cross-validation possible)",
            "last_stage": last,
            "last_map": per_stage[last]["map"],
            "per_stage": per_stage,
            "ap_metric": self.ap_metric,
            "class_names": names,
            "costs": self.costs,
            "cross_val_folds": self.cross_val_folds,
            "normalize": self.normalize,
            "positive_weight": self.positive_weight,
            "dual": self.dual,
            "train_difficult": self.train_difficult,
            "train_images": int(train_rows.sum()),
            "test_images": int(test_rows.sum()),
            "unconverged_fits": self._unconverged,
            "fits": self._fits,
            "seconds": time.perf_counter() - start,
        })


def _finite_or_none(value: Any) -> Any:
    """NaN (an AP without positives) → None, so that results.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value
