"""Downstream evaluation: feature extraction and the protocols that consume it.

Evaluation knows nothing of tasks: it sees an encoder that maps [0, 1] images to features
(:class:`pretextlab.evaluation.encoder.EvaluationEncoder`) and a datamodule that serves the splits.

Protocols: :class:`LinearProbe` (``linear``), :class:`KNNProbe` (``knn``) work on features extracted
once per run; :class:`FineTune` (``finetune``) trains a copy of the encoder itself;
:class:`RotNetClassifiers` (``rotnet_cifar``) trains RotNet's CIFAR classifiers on frozen stage maps;
:class:`VOC07SVM` (``voc07_svm``) scores multi-label data with per-class linear SVMs (mAP).
"""

from pretextlab.evaluation.extract import FeatureSet, extract_features, feature_fingerprint
from pretextlab.evaluation.finetune import FineTune
from pretextlab.evaluation.knn import KNNProbe, knn_scores
from pretextlab.evaluation.linear import LinearProbe, train_linear_models
from pretextlab.evaluation.rotnet import RotNetClassifiers
from pretextlab.evaluation.runner import evaluate, resolve_stages
from pretextlab.evaluation.splits import labelled_split, select_shots, stratified_split
from pretextlab.evaluation.voc07 import VOC07SVM

__all__ = [
    "FeatureSet",
    "FineTune",
    "KNNProbe",
    "LinearProbe",
    "RotNetClassifiers",
    "VOC07SVM",
    "evaluate",
    "extract_features",
    "feature_fingerprint",
    "knn_scores",
    "labelled_split",
    "resolve_stages",
    "select_shots",
    "stratified_split",
    "train_linear_models",
]
