"""DDP inside a Hydra multirun: every process of a job agrees on what it runs and how it ends.

Lightning's ``ddp`` strategy starts the other processes of a node by re-running the command line
(``_SubprocessScriptLauncher``, once, at the first distributed ``fit``). Inside ``-m`` those
processes ("followers") therefore run the whole sweep themselves, job after job, beside the process
Hydra started (rank 0, "the leader"). Left alone they drift apart: each resolves its own sweep
directory (another ``${now:}``), so it reads other run directories when it decides to skip a
finished job or to resume a checkpoint; a job that fails on one rank leaves the others blocked in a
collective; a follower that finished training waits in the next job's first collective while the
leader evaluates, and times out on a long evaluation.

The protocol, over one key-value store (``torch.distributed.TCPStore``) that the leader hosts for
the whole sweep and that the followers find through ``PRETEXTLAB_SWEEP_STORE``:

* Followers get the leader's sweep directory, so the decisions that read a run directory (skip a
  finished job, resume ``last.ckpt``) are made by every process from the same files, and the
  leader writes those files only once every process has read them (after the process-group
  rendezvous of ``fit``, or after the end of the job).
* A follower starts job ``n`` only when the leader has published its plan: the job's overrides and
  run directory (checked on the follower: same job, same directory), a fresh rendezvous port, and
  whether the job is distributed at all (a single-process job in the sweep is run by the leader
  alone). The leader publishes it only after job ``n - 1`` has ended everywhere.
* A process that fails posts its failure to the store, then destroys its process group: peers
  blocked in a gloo collective fail at once, NCCL ones when the collective times out (the
  ``timeout`` of ``trainer=ddp``'s strategy; NCCL is told to raise rather than kill the process).
  Every process destroys its process group when a job ends, so nothing of a job reaches the next.
* The leader waits for every follower's end of job before it writes results
  (:func:`raise_if_another_rank_failed`) and before the next job. A failure on any rank fails the
  job; the leader alone records it, naming the rank that failed first, and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from pretextlab.config import quoted_value

log = logging.getLogger("pretextlab.distributed")

#: ``host:port`` of the leader's store, inherited by the processes Lightning starts.
STORE_ENV = "PRETEXTLAB_SWEEP_STORE"
_BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
#: Lightning's default collective timeout, used when the strategy does not set one.
_DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0
#: A follower waits for the leader's next plan through any evaluation, however long; the leader's
#: death ends the wait at once (the store's connection closes).
_PLAN_WAIT = timedelta(days=30)


class RankFailedError(RuntimeError):
    """Another process of this distributed job failed first; the message is its error."""


class SweepMismatchError(RuntimeError):
    """A follower's job is not the leader's job: the processes would train different things."""


@dataclass(frozen=True)
class JobPlan:
    """What the leader publishes at the start of each job of the sweep."""

    overrides: list[str]
    run_dir: str
    port: int
    distributed: bool


@dataclass
class _Sweep:
    """This process's side of the sweep: its store connection and rank (0 = the leader)."""

    store: dist.TCPStore
    rank: int
    sweep_dir: Path | None = None
    multirun_yaml: bytes | None = None
    world_size: int | None = None

    @property
    def leader(self) -> bool:
        return self.rank == 0


_sweep: _Sweep | None = None
_current: Job | None = None


def start_job(cfg: DictConfig) -> Job | None:
    """Called by every process at the start of each job of a multirun; ``None`` when not coordinated.

    Coordination applies to Hydra's basic (in-process, sequential) launcher; a SLURM launcher runs
    each job as its own set of processes and needs none.
    """
    global _sweep, _current
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.launcher.get("_target_") != _BASIC_LAUNCHER:
        return None
    if _sweep is None:
        _sweep = _join_sweep()
        if _sweep is None:
            return None
    number = int(hydra_cfg.job.num)
    overrides = list(hydra_cfg.overrides.task)
    if _sweep.leader:
        plan = JobPlan(overrides, str(cfg.paths.run_dir), _free_port(), uses_extra_processes(cfg.trainer))
        _sweep.store.set(_key(number, "plan"), json.dumps(asdict(plan)))
    else:
        plan = _await_plan(_sweep, number)
        _check_same_job(plan, overrides, str(cfg.paths.run_dir), number)
    # The rendezvous of this job's process group: a port no earlier job's group can still hold.
    os.environ["MASTER_PORT"] = str(plan.port)
    _current = Job(_sweep, number, plan, _wait_limit_s(cfg.trainer))
    return _current


def raise_if_another_rank_failed() -> None:
    """On the leader, before results are written: wait for every rank's end of job; raise if one failed."""
    if _current is not None and _current.sweep.leader:
        _current.check_followers()


def uses_extra_processes(trainer: Mapping[str, Any]) -> bool:
    """Whether a trainer config may start processes that re-run the command line (Lightning's script launcher)."""
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, Mapping):
        if strategy.get("start_method", "popen") != "popen":
            return False
    elif any(word in str(strategy) for word in ("spawn", "fork", "notebook", "single_device")):
        return False
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    single = devices in (1, "1") or ((OmegaConf.is_list(devices) or isinstance(devices, list)) and len(devices) == 1)
    return not (single and int(nodes) == 1)


class Job:
    """One job of the sweep as this process sees it; ended by :meth:`finish` or :meth:`fail`."""

    def __init__(self, sweep: _Sweep, number: int, plan: JobPlan, wait_limit_s: float) -> None:
        self.sweep, self.number, self.plan, self.wait_limit_s = sweep, number, plan, wait_limit_s
        self._followers_checked = False
        if not sweep.leader and not plan.distributed:
            self._post_done("ok")  # a single-process job: the leader runs it alone

    @property
    def runs_here(self) -> bool:
        """Whether this process runs the job (followers sit out single-process jobs)."""
        return self.sweep.leader or self.plan.distributed

    @property
    def records(self) -> bool:
        """Whether this process writes the job's results or failure record (the leader only)."""
        return self.sweep.leader

    def finish(self) -> None:
        """The job ended without an exception on this process."""
        if not self.runs_here:
            return
        self._note_world_size()
        _destroy_process_group()
        if self.sweep.leader:
            failure = self._wait_for_followers()
            if failure is not None:  # possible only when the leader's run returned early (a skipped job)
                log.warning("job %d: %s", self.number, failure)
            self._restore_multirun_yaml()
        else:
            self._post_done("ok")

    def fail(self, error: BaseException) -> BaseException:
        """The job raised on this process: end it on every rank; returns the error to record."""
        if not isinstance(error, RankFailedError):
            self._post_failure(error)
        self._note_world_size()
        _destroy_process_group()  # peers blocked in a collective with this process now fail too
        if not self.sweep.leader:
            self._post_done("failed")
            return error
        try:
            self._wait_for_followers()
        except RankFailedError as timeout:
            return timeout
        finally:
            self._restore_multirun_yaml()
        first = self._first_failure()
        if first is not None and first["rank"] != 0 and not isinstance(error, RankFailedError):
            return RankFailedError(f"rank {first['rank']} failed: {first['error']}")
        return error

    def check_followers(self) -> None:
        failure = self._wait_for_followers()
        if failure is not None:
            raise RankFailedError(failure)

    # -- store keys of this job --------------------------------------------------------------

    def _post_failure(self, error: BaseException) -> None:
        first_line = (str(error).strip().splitlines() or [""])[0]
        message = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
        store = self.sweep.store
        if store.add(_key(self.number, "failures"), 1) == 1:  # atomic: exactly one rank is first
            store.set(_key(self.number, "first_failure"), json.dumps({"rank": self.sweep.rank, "error": message}))

    def _first_failure(self) -> dict[str, Any] | None:
        store = self.sweep.store
        if store.add(_key(self.number, "failures"), 0) == 0:
            return None
        store.wait([_key(self.number, "first_failure")], timedelta(seconds=self.wait_limit_s))
        first: dict[str, Any] = json.loads(store.get(_key(self.number, "first_failure")))
        return first

    def _post_done(self, status: str) -> None:
        self.sweep.store.set(_key(self.number, f"done/{self.sweep.rank}"), status)

    def _wait_for_followers(self) -> str | None:
        """Leader: block until every follower ended this job; the first failure, if any, as a sentence."""
        if not self._followers_checked:
            self._followers_checked = True  # one wait per job, even when it times out
            try:
                keys = [_key(self.number, f"done/{rank}") for rank in range(1, self._world_size())]
                if keys:
                    self.sweep.store.wait(keys, timedelta(seconds=self.wait_limit_s))
            except dist.DistStoreError as timeout:
                raise RankFailedError(
                    f"a process of this job did not end within {self.wait_limit_s:.0f} s of the leader "
                    "(trainer.strategy.timeout bounds every collective)") from timeout
        first = self._first_failure()
        if first is None or first["rank"] == 0:
            return None
        return f"rank {first['rank']} failed: {first['error']}"

    def _world_size(self) -> int:
        """Leader: processes of the sweep (1 until Lightning has started followers)."""
        if "LOCAL_RANK" not in os.environ:
            return 1  # Lightning sets it in the leader when it starts the followers
        if self.sweep.world_size is None:
            # The leader failed before its process group existed: ask the followers (they register at start).
            self.sweep.store.wait(["world_size"], timedelta(seconds=self.wait_limit_s))
            self.sweep.world_size = int(self.sweep.store.get("world_size"))
        return self.sweep.world_size

    def _note_world_size(self) -> None:
        if self.sweep.leader and dist.is_available() and dist.is_initialized():
            self.sweep.world_size = dist.get_world_size()

    def _restore_multirun_yaml(self) -> None:
        """The followers' Hydra rewrites the shared sweep's multirun.yaml with its own launch flags."""
        sweep = self.sweep
        if sweep.sweep_dir is None or sweep.multirun_yaml is None:
            return
        path = sweep.sweep_dir / "multirun.yaml"
        if path.exists() and path.read_bytes() != sweep.multirun_yaml:
            path.write_bytes(sweep.multirun_yaml)


def _join_sweep() -> _Sweep | None:
    """This process's role, decided once per sweep: leader (host the store) or follower (connect)."""
    address = os.environ.get(STORE_ENV)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if address is not None and local_rank > 0:
        host, port = address.rsplit(":", 1)
        store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(minutes=5))
        store.set("world_size", os.environ.get("WORLD_SIZE", "1"))
        return _Sweep(store, local_rank)
    if "LOCAL_RANK" in os.environ or "RANK" in os.environ:
        log.warning("the processes of this sweep were started by another launcher (LOCAL_RANK/RANK set): "
                    "its DDP jobs are not coordinated; use hydra's basic launcher with trainer=ddp")
        return None
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(minutes=5))
    os.environ[STORE_ENV] = f"127.0.0.1:{store.port}"
    # NCCL's default on a failed or timed-out collective kills the process, and Lightning's launcher
    # then kills the whole sweep; cleaning up the communicators instead makes the collective raise.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    sweep_dir = _share_sweep_dir()
    multirun_yaml = sweep_dir / "multirun.yaml"
    return _Sweep(store, 0, sweep_dir, multirun_yaml.read_bytes() if multirun_yaml.exists() else None)


def _share_sweep_dir() -> Path:
    """Give the followers the leader's sweep directory (resolved once: ``${now:}`` differs per process).

    Lightning's launcher builds the followers' command from ``sys.argv``, so that is where it goes.
    """
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(os.path.abspath(Path(get_original_cwd(), str(hydra_cfg.sweep.dir))))
    kept = [arg for arg in sys.argv[1:] if not arg.lstrip("+~").startswith("hydra.sweep.dir=")]
    sys.argv[1:] = [*kept, f"hydra.sweep.dir={quoted_value(str(sweep_dir))}"]
    return sweep_dir


def _await_plan(sweep: _Sweep, number: int) -> JobPlan:
    try:
        sweep.store.wait([_key(number, "plan")], _PLAN_WAIT)
        return JobPlan(**json.loads(sweep.store.get(_key(number, "plan"))))
    except dist.DistNetworkError:
        # The leader is gone (it ended or was killed): nothing is left to follow.
        log.error("rank %d: the sweep's rank 0 process has ended; stopping", sweep.rank)
        sys.exit(1)


def _check_same_job(plan: JobPlan, overrides: list[str], run_dir: str, number: int) -> None:
    if plan.overrides != overrides or os.path.realpath(plan.run_dir) != os.path.realpath(run_dir):
        raise SweepMismatchError(
            f"job {number}: this process has overrides {overrides} in {run_dir}, rank 0 has "
            f"{plan.overrides} in {plan.run_dir}; the processes of a DDP sweep must run the same command")


def _wait_limit_s(trainer: DictConfig) -> float:
    """How long the leader waits for a follower's end of job: past any collective's timeout."""
    timeout = OmegaConf.select(trainer, "strategy.timeout", default=None)
    seconds = _DEFAULT_COLLECTIVE_TIMEOUT_S
    if OmegaConf.is_dict(timeout):
        plain = OmegaConf.to_container(timeout, resolve=True)
        assert isinstance(plain, dict)
        seconds = timedelta(**{str(k): v for k, v in plain.items() if not str(k).startswith("_")}).total_seconds()
    return 2 * seconds + 60


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as error:  # a group broken by a failed peer may not tear down cleanly
            log.warning("destroying the process group failed: %s", error)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _key(number: int, name: str) -> str:
    return f"job/{number}/{name}"
