"""What the table knows about each task: row order, labels, published reference figures, pretext metrics.

Kept together in one place because this knowledge belongs with the tasks themselves: it is what
each task class will declare about itself.
"""

from __future__ import annotations

#: Row order of the classic comparison: lower bound first, pretext tasks, upper bound last.
TASK_ORDER = ["none", "inpainting", "context", "colorization", "jigsaw", "rotation", "mae", "multitask", "supervised"]
TASK_LABELS = {"none": "random init", "supervised": "supervised"}

#: Published ImageNet linear top-1 (%) as summarised in the seed (see /work/shared/REFERENCES.md):
#: AlexNet/ResNet-50-era models trained on ImageNet. A different setting from any measured cell.
#: Context encoders (inpainting) and MAE have no number in that setting: they show "–".
REFERENCE_IMAGENET_LINEAR = {"none": 11.0, "rotation": 48.0, "jigsaw": 45.0, "colorization": 40.0,
                             "context": 35.0, "supervised": 75.0}
REFERENCE_HEADER = "reference: ImageNet linear top-1 % (published, NOT measured here)"
REFERENCE_LEGEND = (
    "**reference** — published ImageNet linear-probe top-1 as summarised in the seed (random ~11, rotation ~48, "
    "jigsaw ~45, colorization ~40, context ~35, supervised ~75): ImageNet, AlexNet/ResNet-50-era networks, their "
    "own probes. A different setting, shown only for orientation, never comparable cell by cell; inpainting "
    "(context encoder) and MAE have no published number in that setting (–)."
)

#: RotNet's published CIFAR-10 figures (Gidaris et al. 2018; NIN, classifiers on frozen block-2 maps), the
#: reference of rows run in RotNet's own setting (backbone nin on CIFAR-10: experiment=rotnet_cifar_gpu).
REFERENCE_ROTNET_CIFAR = {"rotation": "RotNet CIFAR-10 block2: 89.06 non-linear / 91.16 conv",
                          "none": "RotNet CIFAR-10 random init + conv: 72.50",
                          "supervised": "RotNet CIFAR-10 supervised NIN: 92.80"}
REFERENCE_ROTNET_LEGEND = (
    "**reference** of rows on the `nin` backbone with CIFAR-10 (RotNet's own setting, `experiment=rotnet_cifar_gpu`): "
    "RotNet's published CIFAR-10 top-1 from classifiers on frozen block-2 maps (non-linear MLP, conv block), "
    "not a linear probe and not measured here."
)

#: Pretext metrics a table can show, in order of preference: (results key, label, is accuracy).
#: (inpainting logs ``masked_mse``, MAE ``mse``, regression colorization ``ab_mse``; see tasks/.)
PRETEXT_METRICS = [
    ("val_acc", "acc", True),
    ("val_masked_mse", "masked MSE", False),
    ("val_mse", "MSE", False),
    ("val_ab_mse", "ab MSE", False),
    ("val_loss_reconstruction", "recon. loss", False),
    ("val_loss", "loss", False),
]
