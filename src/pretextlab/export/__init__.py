"""A run directory → a pretrained backbone anyone can load: safetensors weights + a JSON description.

    python -m pretextlab.export outputs/runs/<run> [--stage block3] [--output my/backbone.safetensors]

writes ``backbone.safetensors`` (the backbone's state dict, nothing else) and ``backbone.json``
beside it: how to rebuild the module (``build_config`` for
:func:`pretextlab.backbones.build_backbone`), how inputs must be prepared (the task's input kind
and the normalisation statistics it was trained with), in_channels, feature dim and stage names.
In another project::

    backbone = pretextlab.load_backbone("backbone.safetensors")   # an nn.Module, eval mode
    features = backbone(normalised_images)                         # (B, feature_dim)

Safety: the Lightning checkpoint is read with ``torch.load(weights_only=True)`` — no arbitrary
objects are unpickled — and the exported weights are safetensors, which hold tensors only. Every
output is written atomically. A file that is not what it claims fails with :class:`ExportError`.

The package: :mod:`~pretextlab.export.run` (a run directory → backbone, weights and description),
:mod:`~pretextlab.export.format` (the description written, read and checked; :func:`load_backbone`),
:mod:`~pretextlab.export.stage` (a backbone cut at one stage) and :mod:`~pretextlab.export.cli` (the
command line). The input kind is the one the run's task declared (``input_kind``, recorded in its
``results.json`` as ``task_info``; see :mod:`pretextlab.task_info`).
"""

from pretextlab.export.cli import main
from pretextlab.export.format import FORMAT, FORMAT_VERSION, WEIGHTS_NAME, ExportError, load_backbone, read_metadata
from pretextlab.export.run import describe_run_backbone, export_backbone
from pretextlab.export.stage import StageBackbone
from pretextlab.task_info import DEFAULT_INPUT_KIND

__all__ = [
    "DEFAULT_INPUT_KIND",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "ExportError",
    "StageBackbone",
    "describe_run_backbone",
    "export_backbone",
    "load_backbone",
    "main",
    "read_metadata",
]
