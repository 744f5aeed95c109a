"""Validation of composed configs, run right after composition, before anything is built or written.
It has two parts, plus a check for keys nothing reads:

- :data:`RULES`, a table of ``(key pattern, accepted values)``: types and ranges of single keys. A
  pattern is a dotted key path where ``*`` matches one level and ``**`` any number of levels, so
  ``task.**.lr`` covers every optimiser of every task, whatever its yaml calls the node.
- :func:`_cross_checks`: facts that involve several keys (a task and the backbone it needs, eval
  stages and the backbone's stage names, ...), and each task's own checks (its class's
  ``config_problems``: a jigsaw grid against the image size, ...). The backbone is built on
  PyTorch's ``meta`` device for these checks: no memory, no weights, a few milliseconds, and
  exactly the stage names and shapes the run would see.

Every problem names the key, the value and what is allowed; all problems are reported at once.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretextlab.config import ConfigError
from pretextlab.ops.masks import MASK_FRACTION_ALLOWED, is_mask_fraction
from pretextlab.paths import config_dir
from pretextlab.redaction import redact

SUPPORTED_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "64-true")
#: Largest seed numpy's (and so Lightning's ``seed_everything``) generator accepts; the smallest is 0.
MAX_SEED = 2**32 - 1
#: Smallest image side any backbone/task combination is meant for (the synthetic scenes are 32 px).
MIN_IMAGE_SIZE = 8
#: Environment variables whose values are credentials: never written to any output.


# -- accepted values ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Accepts:
    """A predicate on a config value and the words that tell the user what it accepts."""

    test: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False

    def __or__(self, other: Accepts) -> Accepts:
        return Accepts(lambda v: self(v) or other(v), f"{self.text} or {other.text}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def integer(minimum: int | None = None) -> Accepts:
    text = "an integer" if minimum is None else f"an integer >= {minimum}"
    return Accepts(lambda v: _is_int(v) and (minimum is None or v >= minimum), text)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Accepts:
    """A finite int or float in the interval; ``*_open`` excludes that end."""

    def test(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return not (high is not None and (v >= high if high_open else v > high))

    if low is not None and high is not None:
        text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        text = "a number"
    return Accepts(test, text)


def one_of(*choices: Any) -> Accepts:
    return Accepts(lambda v: not isinstance(v, (dict, list)) and v in choices and type(v) is type(
        next(c for c in choices if c == v)), f"one of {list(choices)}")


def list_of(item: Accepts, length: int | None = None, min_length: int = 1) -> Accepts:
    size = f"{length}" if length is not None else f"at least {min_length}"
    return Accepts(
        lambda v: isinstance(v, (list, tuple)) and (len(v) == length if length is not None else len(v) >= min_length)
        and all(item(x) for x in v),
        f"a list of {size} ({item.text} each)",
    )


BOOLEAN = Accepts(lambda v: isinstance(v, bool), "true or false")
NULL = Accepts(lambda v: v is None, "null")
TEXT = Accepts(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
PROBABILITY = number(0, 1)
OPEN_FRACTION = number(0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class Rule:
    """Every key matching ``pattern`` (when present) must hold a value ``accepts`` takes."""

    pattern: str
    accepts: Accepts


#: Types and ranges of single keys. Keys that are absent are not required (the yaml owns defaults).
RULES: tuple[Rule, ...] = (
    Rule("seed", Accepts(lambda v: _is_int(v) and 0 <= v <= MAX_SEED,
                         f"an integer in [0, {MAX_SEED}] (the seeds numpy accepts)")),
    Rule("overwrite", BOOLEAN),
    Rule("resume", one_of("auto", "never", "none") | NULL | one_of(False) | TEXT),
    # data
    Rule("data.batch_size", integer(1)),
    Rule("data.eval_batch_size", integer(1)),
    Rule("data.num_workers", integer(0)),
    Rule("data.num_pretrain", NULL | integer(1)),
    Rule("data.crop_padding", integer(0)),
    Rule("data.horizontal_flip", BOOLEAN),
    Rule("data.pin_memory", BOOLEAN),
    Rule("data.on_device", BOOLEAN),
    Rule("data.source.image_size", integer(MIN_IMAGE_SIZE)),
    Rule("data.source.num_train", integer(1)),
    Rule("data.source.num_test", integer(1)),
    Rule("data.source.on_bad_image", one_of("skip", "fail")),
    Rule("data.source.root", TEXT),
    Rule("data.source.download", BOOLEAN),
    Rule("data.source.cache", BOOLEAN),
    Rule("data.source.mean", NULL | list_of(number(0, 1), length=3)),
    Rule("data.source.std", NULL | list_of(number(0, low_open=True), length=3)),
    Rule("data.source.in_memory", BOOLEAN),
    Rule("data.source.train_crop", one_of("random_resized", "resize_random", "resize_center")),
    Rule("data.source.crop_scale", list_of(number(0, 1, low_open=True), length=2)),
    Rule("data.source.resize_size", integer(MIN_IMAGE_SIZE)),
    Rule("data.source.eval_image_size", NULL | integer(MIN_IMAGE_SIZE)),
    Rule("data.source.decode_device", one_of("cpu", "cuda")),
    Rule("data.source.pretrain_dir", NULL | TEXT),
    Rule("data.source.test_dir", NULL | TEXT),
    Rule("data.source.num_classes", NULL | integer(1)),
    # task: names shared by every task, then keys any task may use under any node
    Rule("task.name", TEXT),
    Rule("task.in_channels", one_of(1, 3)),
    Rule("task.probe_lr", number(0, low_open=True)),
    Rule("task.online_probe", BOOLEAN),
    Rule("task.online_probe_features", one_of("pretext", "images")),
    Rule("task.panel_images", integer(0)),
    Rule("task.lr_scaling", one_of("none", "linear", "sqrt")),
    Rule("task.base_batch_size", integer(1)),
    Rule("task.**.lr", number(0, low_open=True)),
    Rule("task.**.*_lr", number(0, low_open=True)),  # probe_lr, discriminator_lr, ...
    Rule("task.**.weight_decay", number(0)),
    Rule("task.**.momentum", number(0, 1, high_open=True)),
    Rule("task.**.betas", list_of(number(0, 1, high_open=True), length=2)),
    Rule("task.**.warmup_fraction", number(0, 1, high_open=True)),
    Rule("task.**.mask_ratio", OPEN_FRACTION),
    Rule("task.**.mask_fraction", Accepts(is_mask_fraction, MASK_FRACTION_ALLOWED)),  # worded by ops.masks
    Rule("task.**.*_fraction", PROBABILITY),
    Rule("task.grid", integer(2)),
    Rule("task.num_permutations", integer(1)),
    Rule("task.tile_ratio", number(0, 1, low_open=True)),
    # trainer
    Rule("trainer.max_epochs", integer(0)),
    Rule("trainer.max_steps", integer(-1)),
    Rule("trainer.precision", one_of(*SUPPORTED_PRECISIONS, 32, 64)),
    Rule("trainer.accelerator", one_of("cpu", "gpu", "cuda", "mps", "auto")),
    Rule("trainer.devices", integer(1) | one_of(-1, "auto") | list_of(integer(0))),
    Rule("trainer.num_nodes", integer(1)),
    Rule("trainer.log_every_n_steps", integer(1)),
    Rule("trainer.check_val_every_n_epoch", NULL | integer(1)),
    Rule("trainer.num_sanity_val_steps", integer(-1)),
    Rule("trainer.accumulate_grad_batches", integer(1)),
    Rule("trainer.gradient_clip_val", NULL | number(0)),
    Rule("trainer.limit_train_batches", NULL | integer(1) | number(0, 1, low_open=True)),
    Rule("trainer.limit_val_batches", NULL | integer(0) | number(0, 1)),
    Rule("trainer.fast_dev_run", BOOLEAN | integer(0)),
    Rule("trainer.deterministic", BOOLEAN | one_of("warn")),
    Rule("trainer.compile", BOOLEAN),
    # eval
    Rule("eval.pool_size", NULL | integer(1)),
    Rule("eval.pool_dim", integer(1)),
    Rule("eval.pool_grids.*", integer(1)),
    Rule("eval.bn_recalibration", one_of("auto") | BOOLEAN),
    Rule("eval.bn_images", integer(1)),
    Rule("eval.stages", TEXT | list_of(TEXT)),
    Rule("eval.headline", TEXT),
    Rule("eval.protocols.*.epochs", integer(1)),
    Rule("eval.protocols.*.lr", number(0, low_open=True)),
    Rule("eval.protocols.*.lrs", list_of(number(0, low_open=True))),
    Rule("eval.protocols.*.weight_decays", list_of(number(0))),
    Rule("eval.protocols.*.val_fraction", OPEN_FRACTION),
    Rule("eval.protocols.*.batch_size", integer(1)),
    Rule("eval.protocols.*.k", integer(1)),
    Rule("eval.protocols.*.temperature", number(0, low_open=True)),
    # loggers
    Rule("logger.wandb.mode", one_of("auto", "online", "offline", "disabled")),
)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """``task.**.lr`` → a regex matching ``task.lr``, ``task.optimizer.lr``, ``task.a.b.lr``."""
    segments = pattern.split(".")
    regex = ""
    for index, segment in enumerate(segments):
        if segment == "**":
            regex += r"(?:[^.]+\.)*"
        else:
            regex += re.escape(segment).replace(r"\*", "[^.]*") + ("" if index == len(segments) - 1 else r"\.")
    return re.compile(regex + "$")


_COMPILED_RULES = tuple((_pattern_regex(rule.pattern), rule) for rule in RULES)


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted path, parent, key)`` of every key below ``node``, without resolving interpolations."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key!s}"
            if path == "hydra":
                continue
            yield path, node, key
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none() \
                    and not child._is_interpolation():
                yield from _walk(child, f"{path}.")


def _value(cfg: DictConfig, path: str) -> Any:
    node = OmegaConf.select(cfg, path, throw_on_resolution_failure=True)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _show(value: Any) -> str:
    return repr(redact(value))


def problem(key: str, value: Any, allowed: str) -> str:
    """One problem line in validation's wording: ``key=<value> is not allowed: <allowed>`` (value redacted)."""
    return f"{key}={_show(value)} is not allowed: {allowed}"


def _check_rules(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    for path, parent, key in _walk(cfg):
        if OmegaConf.is_missing(parent, key):
            problems.append(f"{path} is required but not set (???): pass {path}=<value> on the command line")
            continue
        matching = [rule for regex, rule in _COMPILED_RULES if regex.match(path)]
        if not matching:
            continue
        try:
            value = _value(cfg, path)
        except OmegaConfBaseException as error:
            problems.append(f"{path} cannot be resolved: {str(error).splitlines()[0]}")
            continue
        for rule in matching:
            if not rule.accepts(value):
                problems.append(problem(path, value, f"must be {rule.accepts.text}"))
                break
    return problems


# -- unknown keys ------------------------------------------------------------------------------
#: Top-level keys besides the config groups and train.yaml's own: ``extra`` holds free-form notes
#: (``+extra.notes=...``) that are recorded with the run and read by nothing.
FREE_TOP_LEVEL_KEYS = frozenset({"extra", "hydra"})
#: Keys of instantiated nodes that pretextlab reads itself and removes before building the node.
READ_BEFORE_BUILD = {"trainer": frozenset({"compile"})}


def _known_top_level_keys(config_name: str = "train") -> frozenset[str]:
    """The groups of ``conf/<config_name>.yaml``'s defaults list and its own keys."""
    root = OmegaConf.load(config_dir() / f"{config_name}.yaml")
    assert isinstance(root, DictConfig)
    groups = set()
    for entry in root.get("defaults", []):
        if isinstance(entry, (DictConfig, dict)):
            for key in entry:
                groups.add(str(key).removeprefix("optional ").removeprefix("override ").split("@")[0])
    return frozenset(groups | {str(k) for k in root.keys() if k != "defaults"} | FREE_TOP_LEVEL_KEYS)


def _accepted_arguments(target: Any) -> set[str] | None:
    """The keyword arguments ``target`` takes, following ``**kwargs`` handed up the class hierarchy;
    None when it takes any."""
    import inspect

    if not isinstance(target, type):
        arguments = inspect.signature(target).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in arguments):
            return None
        return {p.name for p in arguments}
    names: set[str] = set()
    for cls in target.__mro__:
        if "__init__" not in cls.__dict__ or cls is object:
            continue
        parameters = list(inspect.signature(cls.__dict__["__init__"]).parameters.values())[1:]
        names |= {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return names
    return None


def _unknown_keys(cfg: DictConfig, config_name: str = "train") -> list[str]:
    """Keys nothing reads: a mistyped or ``+``-added top-level key (of ``conf/<config_name>.yaml``: train's,
    or evaluate's), or a key of an instantiated node (``_target_``) that its class or function does not take."""
    from hydra.utils import get_object

    known = _known_top_level_keys(config_name)
    problems = [f"{key} is not a pretextlab setting (top-level keys: "
                f"{', '.join(sorted(known - {'hydra'}))}); remove it, or put notes under "
                f"+extra.{key}=..." for key in map(str, cfg.keys()) if key not in known]
    for path, parent, key in _walk(cfg):
        node = parent._get_node(key)
        if not isinstance(node, DictConfig) or node._is_missing() or node._is_none() or "_target_" not in node:
            continue
        target_name = node._get_node("_target_")
        if target_name is None or target_name._is_interpolation():
            continue
        try:
            accepted = _accepted_arguments(get_object(str(target_name._value())))
        except Exception:  # an unknown target is reported when it is built
            continue
        if accepted is None:
            continue
        accepted |= READ_BEFORE_BUILD.get(path, frozenset())
        for name in map(str, node.keys()):
            if not name.startswith("_") and name not in accepted:
                close = sorted(accepted, key=lambda a: _edit_distance(a, name))[:1]
                near = close and _edit_distance(close[0], name) <= max(1, len(name) // 3)
                hint = f" (did you mean {path}.{close[0]}?)" if near else ""
                problems.append(f"{path}.{name} is not a setting of {target_name._value()}{hint}; "
                                f"its settings: {', '.join(sorted(accepted))}")
    return problems


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


# -- checks across keys ------------------------------------------------------------------------
def _build_backbone_on_meta(cfg: DictConfig) -> Any:
    """The configured backbone with ``meta`` tensors: stage names and shapes, no memory, no weights."""
    import torch
    from hydra.utils import instantiate

    with torch.device("meta"):
        return instantiate(cfg.backbone)


def _backbone_problems(cfg: DictConfig, image_size: int | None) -> tuple[Any, list[str]]:
    import torch

    name = cfg.backbone.get("name", "?")
    try:
        backbone = _build_backbone_on_meta(cfg)
    except Exception as error:  # the constructor's own message says what is wrong
        cause = error.__cause__ or error
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return None, [f"backbone={name} cannot be built from these backbone.* values: {redact(first)}"]
    if image_size is None:
        return backbone, []
    try:
        probe = torch.empty(2, int(backbone.in_channels), image_size, image_size, device="meta")
        backbone.eval()
        with torch.no_grad():
            backbone.stage_outputs(probe)
    except (RuntimeError, ValueError, AssertionError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return backbone, [
            f"data.source.image_size={image_size} is not allowed: backbone={name} cannot process "
            f"{image_size} px images ({first}); use larger images or a shallower backbone"
        ]
    except NotImplementedError:  # an op without a meta kernel: the run itself will tell
        pass
    return backbone, []


def _pooling_problems(cfg: DictConfig, backbone: Any, image_size: int | None) -> list[str]:
    """The layer-wise probe's per-stage grids against the stage maps (a grid larger than its map)."""
    from pretextlab.backbones.pooling import PoolingError, pooling_problems
    from pretextlab.evaluation.runner import stage_pooling

    if image_size is None:
        return []
    try:
        return pooling_problems(backbone, int(image_size), stage_pooling(cfg.eval))
    except (PoolingError, TypeError, ValueError) as error:  # the key rules report the value itself
        return [str(error)] if isinstance(error, PoolingError) else []


def _task_class(cfg: DictConfig) -> tuple[Any, list[str]]:
    from hydra.utils import get_class

    target = cfg.task.get("_target_")
    if target is None:
        return None, []
    try:
        return get_class(str(target)), []
    except Exception as error:
        return None, [problem("task._target_", target, f"must name an importable task class ({error})")]


def _cross_checks(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    image_size = cfg.data.source.get("image_size")
    task_class, class_problems = _task_class(cfg)
    problems += class_problems

    # The channels the task feeds (its input kind's) and the channels the backbone is built for.
    task_channels, backbone_channels = cfg.task.get("in_channels"), cfg.backbone.get("in_channels")
    input_kind_of = getattr(task_class, "input_kind_of", None)
    if task_channels is not None and callable(input_kind_of):
        from pretextlab.task_info import input_kind_problem

        kind_problem = input_kind_problem(input_kind_of({"in_channels": task_channels}), task_channels)
        if kind_problem is not None:
            problems.append(problem("task.in_channels", task_channels, f"task={cfg.task.get('name')} {kind_problem}"))
    if task_channels is not None and backbone_channels is not None and task_channels != backbone_channels:
        problems.append(
            problem("backbone.in_channels", backbone_channels,
                     f"task={cfg.task.get('name')} feeds {task_channels}-channel images; "
                     "leave backbone.in_channels=${task.in_channels}")
        )

    backbone, backbone_problems = _backbone_problems(cfg, image_size)
    problems += backbone_problems
    if backbone is not None:
        from pretextlab.tasks.base import backbone_problem

        requirement = backbone_problem(getattr(task_class, "requires", "any"), backbone)
        if requirement is not None:
            problems.append(f"backbone={cfg.backbone.get('name')} is not allowed with "
                            f"task={cfg.task.get('name')}: the task {requirement}")
        stages = _value(cfg, "eval.stages")
        names = list(backbone.stage_names)
        wanted_stages = [stages] if isinstance(stages, str) and stages not in ("all", "last") else (
            stages if isinstance(stages, list) else [])
        unknown = [s for s in wanted_stages if s not in names]
        if unknown:
            problems.append(problem("eval.stages", stages,
                                     f"backbone={cfg.backbone.get('name')} has no stage(s) {unknown}; "
                                     f"use all, last, or a list from {names}"))
        problems += _pooling_problems(cfg, backbone, image_size)
        # A task reading one stage of the backbone (inpainting's encoder_stage, ...).
        for key in [k for k in cfg.task.keys() if str(k).endswith("_stage")]:
            stage = cfg.task.get(key)
            named_wrong = isinstance(stage, str) and stage not in names
            index_wrong = _is_int(stage) and not -len(names) <= stage < len(names)
            if named_wrong or index_wrong:
                problems.append(problem(f"task.{key}", stage, f"backbone={cfg.backbone.get('name')} has stages "
                                                               f"{names} (a name, an index, or null: the last)"))

    # The task's own checks: a jigsaw grid, a context layout, and the size of what each task (or
    # multitask member) feeds the backbone against the smallest input the backbone takes.
    if image_size is not None:
        problems += _task_problems(cfg, task_class, backbone, int(image_size))

    # Zero pretraining would leave a pretext task's backbone at random init, reported under its name.
    if task_class is not None and getattr(task_class, "pretrains", True):
        for key in ("max_epochs", "max_steps"):
            if cfg.trainer.get(key) == 0:
                problems.append(problem(
                    f"trainer.{key}", 0,
                    f"task={cfg.task.get('name')} pretrains, and 0 {key.removeprefix('max_')} would leave its "
                    "backbone at random init while the results carry the task's name; use a positive value, "
                    "or task=none for the random-init row"))

    headline = str(cfg.eval.get("headline", "none"))
    protocols = list((cfg.eval.get("protocols") or {}).keys())
    if headline != "none" and headline.split("/")[0] not in protocols:
        problems.append(problem("eval.headline", headline,
                                 f"must be none or <protocol>/<metric> with a protocol of eval.protocols {protocols}"))

    precision, accelerator = str(cfg.trainer.get("precision")), cfg.trainer.get("accelerator")
    if accelerator == "cpu" and precision == "16-mixed":
        problems.append(problem("trainer.precision", precision,
                                 "float16 mixed precision needs a GPU; use bf16-mixed or 32-true on CPU"))
    if accelerator in ("gpu", "cuda"):
        from lightning.pytorch.accelerators import CUDAAccelerator

        if not CUDAAccelerator.is_available():  # NVML-based: does not initialise CUDA in this process
            problems.append(problem("trainer.accelerator", accelerator,
                                     "no CUDA GPU is visible on this machine; use trainer=cpu"))

    # Fewer images than one batch: every epoch would have no training step at all.
    num_images = cfg.data.get("num_pretrain") or cfg.data.source.get("num_train")
    if num_images is not None and int(num_images) < int(cfg.data.batch_size):
        problems.append(problem("data.batch_size", cfg.data.batch_size,
                                 f"must be <= the {num_images} pretraining images, or no epoch has a full batch"))
    from pretextlab.data.checks import streaming_problems

    problems += streaming_problems(cfg)
    if image_size is not None and int(cfg.data.get("crop_padding", 0)) >= int(image_size):
        problems.append(problem("data.crop_padding", cfg.data.crop_padding,
                                 f"must be smaller than data.source.image_size={image_size}"))
    return problems


def _task_problems(cfg: DictConfig, task_class: Any, backbone: Any, image_size: int) -> list[str]:
    """The task's own checks (:meth:`PretextTask.config_problems`: a tile layout against the image size, ...)."""
    from pretextlab.tasks.base import PretextTask
    from pretextlab.tasks.config_checks import TaskConfigCheck

    if not (isinstance(task_class, type) and issubclass(task_class, PretextTask)):
        return []
    check = TaskConfigCheck(node=cfg.task, prefix="task.", label=f"task={cfg.task.get('name')}",
                            image_size=image_size, backbone=backbone, backbone_name=str(cfg.backbone.get("name")),
                            task_class=task_class)
    return task_class.config_problems(check)


def output_dir_problem(directory: str | Path, key: str = "hydra.run.dir") -> str | None:
    """Why ``directory`` cannot be created or written (one line naming ``key`` as the fix), or None.

    Nothing is left behind: the check writes an anonymous temporary file into the directory, or
    into its nearest existing parent when the directory does not exist yet.
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = f"choose another with {key}=..."
    if not existing.is_dir():
        return f"output directory {directory} cannot be created: {existing} is a file, not a folder; {fix}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"output directory {directory} cannot be written ({existing} is read-only); {fix}"
    try:  # os.access says yes to root even where writing fails (a read-only mount): try for real
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "" if existing == directory else f" in {existing}"
        return f"output directory {directory} cannot be written ({error.strerror or error}{where}); {fix}"
    return None


def _output_problems(cfg: DictConfig) -> list[str]:
    """An output directory that cannot be created or written fails here, before any training."""
    try:
        run_dir = Path(str(OmegaConf.select(cfg, "paths.run_dir", throw_on_resolution_failure=True)))
    except OmegaConfBaseException:
        return []  # composed outside Hydra without a run dir: the caller decides where outputs go
    problem = output_dir_problem(run_dir)
    return [problem] if problem else []


def validate_config(cfg: DictConfig) -> None:
    """Check a composed config before any work; raise :class:`ConfigError` listing every problem.

    The message's first line is the first problem (key, value and what is allowed); the other
    problems follow, one a line.
    """
    problems = _unknown_keys(cfg) + _check_rules(cfg)
    if not problems:  # cross-checks assume every single key has the right type
        problems = _cross_checks(cfg)
    if not problems:
        problems = _output_problems(cfg)
    if problems:
        message = problems[0]
        if len(problems) > 1:
            message += "\n" + "\n".join(f"  also: {p}" for p in problems[1:])
        raise ConfigError(message, problems)
