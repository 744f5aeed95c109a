"""Config checks of a streamed image folder, run by :func:`pretextlab.validation.validate_config`.

They catch, before any pretraining, what would otherwise fail only at evaluation hours later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretextlab.data.folders import is_labelled

#: Protocols that need the whole training split in memory (they take it as one tensor).
IN_MEMORY_PROTOCOLS = ("FineTune",)


def streaming_problems(cfg: Any) -> list[str]:
    """Problems of ``data.source.in_memory=false`` with the rest of the config (one line each)."""
    source = cfg.data.source
    if source.get("in_memory", True) is not False:
        return []
    problems: list[str] = []
    protocols = {str(name): str(node.get("_target_", "")) for name, node in (cfg.eval.get("protocols") or {}).items()
                 if node is not None}
    for name, target in protocols.items():
        if target.rsplit(".", 1)[-1] in IN_MEMORY_PROTOCOLS:
            problems.append(f"eval.protocols.{name} ({target}) is not allowed with data.source.in_memory=false: "
                            "fine-tuning takes the training split from memory; use eval=linear_knn (linear and "
                            "kNN probes stream) or data.source.in_memory=true")
    if protocols and source.get("test_dir") is None:
        problems.append(f"data.source.test_dir=null is not allowed with eval protocols {sorted(protocols)}: "
                        "evaluation scores the test split; set data.source.test_dir or eval=none")
    train = Path(str(source.get("root", ""))).expanduser() / str(source.get("train_dir", "train"))
    unlabeled = train.is_dir() and not is_labelled(train)
    if unlabeled and protocols:
        problems.append(f"data.source.train_dir={source.get('train_dir')} is not allowed with eval protocols "
                        f"{sorted(protocols)}: {train} holds no class sub-folders (unlabeled images), which can be "
                        "pretrained on but not evaluated; use eval=none, or put labelled train/test folders under "
                        "data.source.root and the unlabeled images in data.source.pretrain_dir")
    if unlabeled and cfg.task.get("name") == "supervised":
        problems.append(f"task=supervised is not allowed on unlabeled images ({train} holds no class sub-folders)")
    return problems
