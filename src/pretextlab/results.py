"""The ``results.json`` record of one job, read back and checked: what the table (and later export
and evaluation) may rely on.

``pretextlab.train`` writes one ``results.json`` per job: ``status`` ``"ok"`` with the job's
identity (task, backbone, data, seed), its metrics and its resolved config, or ``"failed: <first
line of the error>"`` with whatever identity was known. :meth:`ResultsRecord.from_json` checks the
types and the keys a record of its status needs, and raises :class:`ResultsError` naming the file
and the field otherwise, so that a damaged or hand-made file can never pass for a finished job.

``pretextlab.evaluate`` writes the same record for a pretrained backbone evaluated on other data,
marked ``"kind": "transfer"``; its ``pretrained`` object names the backbone evaluated (path, task,
backbone, pretraining data, seed), and its ``task``/``backbone`` are that backbone's, ``data`` the
evaluation data. Records without ``kind`` are pretraining jobs.

``schema_version`` (absent in files written before it existed: version 1) lets a reader refuse a
record written by a newer pretextlab instead of misreading it.

Every writer (``train``, ``evaluate``, ``audit``, a failed job's record) goes through
:func:`write_results`, which checks the record exactly as a reader will before it is written: a
record the table would refuse is never written. ``options`` records the config options the job was
composed from (``task=jigsaw``, ``backbone=vit_small``, ``experiment=…``): part of a row's identity,
so two variants never merge into one row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretextlab.io import atomic_write_json, read_json

#: The version of the record this module reads and ``pretextlab.train`` writes.
SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
#: The task whose record is random init by definition: it alone may report 0 pretraining steps.
NO_PRETRAINING_TASKS = ("none",)
#: Keys an ``ok`` record must hold.
REQUIRED_OK_KEYS = ("task", "backbone", "data", "seed", "eval")
#: ``kind`` of a record written by ``pretextlab.evaluate`` (no ``kind``: a pretraining job).
TRANSFER_KIND = "transfer"
#: Config groups whose chosen option is recorded in ``options`` (the ones that change what is measured;
#: the trainer and logger options change how, not what).
IDENTITY_GROUPS = ("task", "backbone", "data", "eval", "experiment")


class ResultsError(ValueError):
    """A results.json that cannot be used: unreadable, not a JSON object, or a field of the wrong type.

    The message starts with the file's path when it is known.
    """


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # NaN is a number here: json.dumps writes it (e.g. a diverged metric) and the table shows it as such.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ResultsRecord:
    """One job's results, checked. ``raw`` is the whole JSON object (keys this class does not type stay there)."""

    status: str
    task: str | None
    backbone: str | None
    data: str | None
    #: An int for a finished job; a failed job may record the (invalid) seed it was given, as text.
    seed: int | str | None
    schema_version: int = SCHEMA_VERSION
    epochs: int | None = None
    steps: int | None = None
    #: Images the job really pretrained on (``data.num_pretrain`` capped by the split); None if not recorded.
    pretrain_images: int | None = None
    #: None for a pretraining job; :data:`TRANSFER_KIND` for an evaluation by ``pretextlab.evaluate``.
    kind: str | None = None
    #: The config option chosen in each of :data:`IDENTITY_GROUPS` (None: composed outside Hydra's
    #: command line, or written before pretextlab recorded it).
    options: dict[str, str | None] | None = None
    #: What the task says about itself (table label and order, pretext metric, references, input kind;
    #: see :mod:`pretextlab.task_info`); None in records written before it was recorded.
    task_info: dict[str, Any] | None = None
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def transfer(self) -> bool:
        """An evaluation of a pretrained backbone by ``pretextlab.evaluate`` (not a pretraining job)."""
        return self.kind == TRANSFER_KIND

    @property
    def pretrained(self) -> dict[str, Any]:
        """A transfer record's ``pretrained`` object (checked); empty for a pretraining job."""
        value = self.raw.get("pretrained")
        return dict(value) if self.transfer and isinstance(value, dict) else {}

    @property
    def untrained(self) -> bool:
        """A finished pretext job that ran no pretraining step: its backbone is random init, whatever its task says."""
        return self.ok and self.task not in NO_PRETRAINING_TASKS and self.steps == 0

    # -- reading ----------------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path) -> ResultsRecord:
        """The record in ``path``; :class:`ResultsError` (naming the path) when it is not a usable one."""
        path = Path(path)
        payload = read_json(path, ResultsError, unreadable="{path}: cannot be read ({error})",
                            invalid="{path}: not valid JSON ({error})")
        return cls.from_json(payload, path)

    @classmethod
    def from_json(cls, payload: Any, path: str | Path | None = None) -> ResultsRecord:
        """Check a decoded results.json object; :class:`ResultsError` lists every problem found."""
        where = f"{path}: " if path is not None else ""
        if not isinstance(payload, dict):
            raise ResultsError(f"{where}not a JSON object but {type(payload).__name__}")
        problems: list[str] = []

        def wrong(key: str, wanted: str) -> None:
            problems.append(f"{key}={_short(payload[key])} must be {wanted}")

        version = payload.get("schema_version", 1)
        if not _is_int(version) or version < 1:
            problems.append(f"schema_version={_short(version)} must be an integer >= 1")
        elif version > SCHEMA_VERSION:
            raise ResultsError(f"{where}written with results schema {version}; this pretextlab reads up to "
                               f"{SCHEMA_VERSION} (upgrade pretextlab)")

        status = payload.get("status")
        if "status" not in payload:
            problems.append("no 'status'")
        elif not isinstance(status, str) or not status.strip():
            wrong("status", "a non-empty string ('ok' or 'failed: ...')")
        ok = status == "ok"

        if ok:
            missing = [key for key in REQUIRED_OK_KEYS if key not in payload]
            if missing:
                problems.append(f"status 'ok' but no {', '.join(repr(k) for k in missing)}")
            for key in ("task", "backbone", "data"):
                if key in payload and not (isinstance(payload[key], str) and payload[key]):
                    wrong(key, "a non-empty string")
            if "seed" in payload and not _is_int(payload["seed"]):
                wrong("seed", "an integer")
            if "eval" in payload and not (isinstance(payload["eval"], dict)
                                          and all(isinstance(v, dict) for v in payload["eval"].values())):
                wrong("eval", "an object of protocol results (objects)")
        for key in ("pretext", "online_probe", "wall_time"):
            value = payload.get(key)
            if value is not None and not (isinstance(value, dict) and all(_is_number(v) for v in value.values())):
                wrong(key, "an object of numbers")
        for key in ("epochs", "steps", "pretrain_images"):
            value = payload.get(key)
            if value is not None and not (_is_int(value) and value >= 0):
                wrong(key, "an integer >= 0")
        headline = payload.get("headline")
        if headline is not None and not (isinstance(headline, dict)
                                         and (headline.get("value") is None or _is_number(headline["value"]))):
            wrong("headline", "an object with a numeric (or null) 'value'")
        for key in ("config", "versions", "task_info"):
            if payload.get(key) is not None and not isinstance(payload[key], dict):
                wrong(key, "an object")
        options = payload.get("options")
        if options is not None and not (isinstance(options, dict) and all(
                isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in options.items())):
            wrong("options", "an object of config group -> chosen option (a string or null)")
        kind = payload.get("kind")
        if kind is not None and kind != TRANSFER_KIND:
            wrong("kind", f"absent (a pretraining job) or {TRANSFER_KIND!r} (an evaluation by pretextlab.evaluate)")
        elif kind == TRANSFER_KIND:
            problems += _pretrained_problems(payload.get("pretrained"), ok)
            if payload.get("input") is not None and not isinstance(payload["input"], dict):
                wrong("input", "an object (how the evaluation prepared its images)")
        chance = payload.get("chance_accuracy")
        if chance is not None and not (_is_number(chance) and (math.isnan(chance) or 0 <= chance <= 1)):
            wrong("chance_accuracy", "a number in [0, 1] or null")
        if problems:
            raise ResultsError(where + "; ".join(problems))

        def text(key: str) -> str | None:  # a failed job records what it was given, whatever its type
            value = payload.get(key)
            return None if value is None else value if isinstance(value, str) else json.dumps(value, default=str)

        seed = payload.get("seed")
        return cls(
            status=str(status), task=text("task"), backbone=text("backbone"), data=text("data"),
            seed=seed if seed is None or _is_int(seed) else text("seed"),
            schema_version=int(version), epochs=payload.get("epochs"), steps=payload.get("steps"),
            pretrain_images=payload.get("pretrain_images"), kind=kind, options=options,
            task_info=payload.get("task_info"),
            path=Path(path) if path is not None else None, raw=dict(payload))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object with the checked identity fields in their normalised form (for dict-based readers)."""
        return {**self.raw, "status": self.status, "task": self.task, "backbone": self.backbone, "data": self.data,
                "seed": self.seed}


def write_results(path: str | Path, payload: dict[str, Any]) -> ResultsRecord:
    """Check ``payload`` as :meth:`ResultsRecord.read` will, then write it atomically to ``path``.

    A record a reader would refuse raises :class:`ResultsError` (naming the field) and nothing is written.
    """
    record = ResultsRecord.from_json(payload, path)
    atomic_write_json(Path(path), payload)
    return record


def chosen_options(choices: dict[str, Any] | None) -> dict[str, str | None] | None:
    """The options of :data:`IDENTITY_GROUPS` among Hydra's runtime choices (None outside Hydra)."""
    if choices is None:
        return None
    return {group: (None if choices.get(group) is None else str(choices.get(group))) for group in IDENTITY_GROUPS}


def _pretrained_problems(pretrained: Any, ok: bool) -> list[str]:
    """What is wrong with a transfer record's ``pretrained`` object (a failed job may know only its path)."""
    if not isinstance(pretrained, dict):
        return [f"kind 'transfer' but pretrained={_short(pretrained)} is not an object naming the evaluated backbone"]
    problems = []
    if not (isinstance(pretrained.get("path"), str) and pretrained["path"]):
        problems.append(f"pretrained.path={_short(pretrained.get('path'))} must be a non-empty string")
    if ok:
        for key in ("task", "backbone", "data"):
            value = pretrained.get(key)
            if value is not None and not (isinstance(value, str) and value):
                problems.append(f"pretrained.{key}={_short(value)} must be a non-empty string or null")
        seed = pretrained.get("seed")
        if seed is not None and not _is_int(seed):
            problems.append(f"pretrained.seed={_short(seed)} must be an integer or null")
    return problems


def lookup_metric(tree: dict[str, Any], dotted: str) -> float | None:
    """The number at ``dotted`` (``linear/top1``) in a nested results tree, or None."""
    node: Any = tree
    for part in dotted.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None
