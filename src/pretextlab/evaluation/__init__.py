"""Downstream evaluation: feature extraction and the protocols that consume it.

Evaluation knows nothing of tasks: it sees an encoder that maps [0, 1] images to features
(:class:`pretextlab.tasks.base.EvaluationEncoder`) and a datamodule that serves the splits.
"""

from pretextlab.evaluation.extract import FeatureSet, extract_features
from pretextlab.evaluation.linear import LinearProbe, train_linear_classifier

__all__ = ["FeatureSet", "LinearProbe", "extract_features", "train_linear_classifier"]
