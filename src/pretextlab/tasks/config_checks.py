"""A task's own config checks (:meth:`PretextTask.config_problems`): what they are given, and what they share.

Config validation (:mod:`pretextlab.validation`) calls every task's hook with a :class:`TaskConfigCheck`
after the single-key rules passed; a task answers with problem lines in validation's wording
(:func:`pretextlab.validation.problem`). A task that cuts tiles or patches describes what it feeds
the backbone as :class:`Feed` s, and :meth:`TaskConfigCheck.feed_problems` checks them against the
backbone (built on the ``meta`` device: shapes only).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pretextlab.validation import problem


@dataclass(frozen=True)
class Feed:
    """A square input a task gives its backbone during pretraining, and the key that sets its size."""

    what: str    # "6 px tiles (a 3x3 grid on 24 px images, tile_ratio 0.8)"
    size: int
    key: str     # the key named first in the message
    value: Any
    fixes: Callable[[int], str]  # the ways out, given the size the backbone needs


@dataclass(frozen=True)
class TaskConfigCheck:
    """What a task's config check is given.

    ``node`` is the task's config node (``cfg.task``, or a multitask member's ``task`` node), ``prefix``
    the dotted path messages name its keys by (``"task."``, ``"task.members.jigsaw.task."``), ``label``
    how messages name the task (``"task=jigsaw"``, ``"task=multitask (member jigsaw)"``). ``backbone``
    is the configured backbone on the ``meta`` device, or None when it cannot be built (that problem is
    reported on its own); ``task_class`` the class the node builds.
    """

    node: Any
    prefix: str
    label: str
    image_size: int
    backbone: Any
    backbone_name: str
    task_class: type

    def key(self, name: str) -> str:
        """The full key of the task's setting ``name`` (``task.grid``)."""
        return f"{self.prefix}{name}"

    def setting(self, name: str) -> Any:
        """The node's value of ``name``, or the task class's default for it when the node leaves it out."""
        if name in self.node:
            return self.node.get(name)
        parameter = inspect.signature(self.task_class.__init__).parameters.get(name)  # type: ignore[misc]
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default

    def for_member(self, member: str, node: Any, task_class: type) -> TaskConfigCheck:
        """The check of a multitask member's node (its keys and messages name the member)."""
        return replace(self, node=node, prefix=f"{self.prefix}members.{member}.task.",
                       label=f"{self.label} (member {member})", task_class=task_class)

    def feed_problems(self, feeds: list[Feed]) -> list[str]:
        """Each input the task feeds the backbone that the backbone cannot take, with the ways out."""
        if self.backbone is None:
            return []
        problems: list[str] = []
        for feed in feeds:
            refused = backbone_refuses(self.backbone, feed.size)
            if refused is None:
                continue
            reason, needed = refused
            fixes = feed.fixes(needed) if needed is not None else ""
            problems.append(problem(
                feed.key, feed.value,
                f"{self.label} feeds the backbone {feed.what}, and backbone={self.backbone_name} {reason}"
                + (f"; {fixes}" if fixes else "; use larger tiles/patches or another backbone")))
        return problems


def backbone_refuses(backbone: Any, size: int) -> tuple[str, int | None] | None:
    """Why ``backbone`` cannot take ``size`` px inputs (and the size it needs, when known), or None."""
    import torch

    fixed = getattr(backbone, "fixed_input_size", None)
    if fixed is not None:
        return (None if size == fixed else (f"takes {fixed} px inputs only", fixed))
    minimum = getattr(backbone, "min_input_size", None)
    if minimum is not None:
        return None if size >= minimum else (f"takes inputs of at least {minimum} px", int(minimum))
    try:  # a backbone that does not say: try it with shape-only tensors
        backbone.eval()
        with torch.no_grad():
            backbone.stage_outputs(torch.empty(2, int(backbone.in_channels), size, size, device="meta"))
    except (RuntimeError, ValueError, AssertionError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"cannot process {size} px inputs ({first})", None
    except NotImplementedError:  # an op without a meta kernel: the run itself will tell
        pass
    return None
