"""Optuna sweeps over config values: studies, trials, workers (``ensda sweep``).

A sweep is an Optuna study in an RDB storage (default ``sqlite:///optuna.db``, any
SQLAlchemy URL, e.g. PostgreSQL for workers on several machines). The study's user attrs
hold what every worker needs: the base config (``ensda.config``, the YAML plus ``--set``
overrides), the trial budget and the id of the sweep's MLflow parent run. One trial is the
base config with the trial's values set → ``make_osse`` → ``run_method`` → summary; its
value is the objective (``ssr_*`` objectives are |SSR − 1|). Seeds come from the config, so
the same values give the same result.

Bookkeeping (all state lives in the storage, so any number of workers and launches share it):

- *grid*: the launcher enqueues every grid point that has no live trial; a worker takes a
  waiting trial by the storage's atomic WAITING → RUNNING claim (on SQLite made atomic by
  ``BEGIN IMMEDIATE`` transactions, ``_serialise_sqlite``), so no point runs twice.
  A trial the sampler makes outside the queue (a worker asked just as another emptied it)
  is pruned without running, and so is a queued duplicate of a point another trial holds.
- *tpe / random*: a trial whose number ranks beyond the budget among the live trials is
  pruned without running.
- *done* = COMPLETE + FAIL trials that no retry replaced. Every failure is final and keeps
  its reason (user attr ``ensda.failure``, kind ``ensda.failure_kind``; MLflow tag
  ``ensda.failure``; the results table): ``diverged`` (``NonFiniteStateError``: same seeds,
  same failure), ``config`` (the values make no valid config) and ``error`` (any other
  exception: its type and message, e.g. a missing checkpoint). The sweep then ends with
  exit status 1 and its MLflow parent run FAILED unless every failure is a divergence.
- *retried*: a trial whose worker died (kill -9, lost machine) has no heartbeat for
  ``sweep.grace_period`` s; the next worker or launch fails it, marks its MLflow run FAILED
  and queues a retry with the same values (``RetryHeartbeatStaleTrialCallback``, at most
  ``MAX_RETRY`` times). An interrupted trial (Ctrl-C, or SIGTERM, which a worker turns into
  the same ``KeyboardInterrupt``) is marked ``ensda.interrupted``, its MLflow run KILLED, and
  the next launch queues it again (``requeue_interrupted``).

Trials are MLflow child runs of the parent run (tags ``optuna.study`` and
``optuna.trial_number``; the trial's user attr ``ensda.mlflow_run_id`` points back).

Workers: ``ensda sweep-worker --study NAME`` with the storage URL in ``$ENSDA_STORAGE``
(never in argv, which ``ps`` shows; ``worker_main``; ``start_workers`` pins each to one GPU
with ``CUDA_VISIBLE_DEVICES``, or to one CPU device and a share of the cores). Messages,
logs and tuned files show the URL with its password masked (``redact``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable

import jax
import numpy as np
import optuna
import sqlalchemy.exc
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from ensda import tracking
from ensda.config import ConfigError, ExperimentConfig, SweepConfig, flatten, validate
from ensda.cycle import NonFiniteStateError
from ensda.experiment import make_osse, run_method

DEFAULT_STORAGE = "sqlite:///optuna.db"
SQLITE_TIMEOUT_S = 60  # a worker waits this long for SQLite's write lock
STUDY_CONFIG = "ensda.config"
STUDY_TRIALS = "ensda.trials"
STUDY_PARENT = "ensda.mlflow_parent_run_id"
FAILURE = "ensda.failure"
#: why a trial failed: ``config`` (its values make no valid config), ``diverged`` (non-finite
#: state), ``error`` (anything else: a missing checkpoint, out of memory, an MLflow failure);
#: all final. An interrupted trial (Ctrl-C, SIGTERM) is marked ``INTERRUPTED`` instead and
#: runs again on resume, as a trial whose worker died does (heartbeat)
FAILURE_KIND = "ensda.failure_kind"
INTERRUPTED = "ensda.interrupted"
#: user attr of a trial queued to rerun an interrupted one: the interrupted trial's number
RETRY_OF = "ensda.retry_of"
RUN_ID = "ensda.mlflow_run_id"
SUMMARY = "ensda.summary"
DEVICE = "ensda.device"
#: the JAX device a trial ran on (``TFRT_CPU_0``, ``cuda:0``): trial user attr; MLflow tag
#: ``ensda.device``
JAX_DEVICE = "ensda.jax_device"
#: study user attr ``ensda.worker.<index>``: {device, label, pid, host} of the last worker with that
#: index
WORKER = "ensda.worker"
#: environment variable: index of the JAX device a worker computes on (set by ``worker_setups``)
JAX_DEVICE_ENV = "ENSDA_JAX_DEVICE"
#: a trial whose worker died is retried at most this many times
MAX_RETRY = 3
POLL_S = 1.0
#: the reason shown for a failed trial without one: only a stale heartbeat fails a trial so
STALE_REASON = "worker lost: no heartbeat, retries used up"


class SweepError(RuntimeError):
    """A sweep that cannot start or go on; the message says why and what to do."""


class TrialFailure(Exception):
    """A trial that ran to a failure (diverged, invalid values, non-finite objective)."""


@contextlib.contextmanager
def _quiet():
    """Optuna's heartbeat and retry helpers are marked experimental; say so once, here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def objective_value(summary: dict, objective: str) -> float:
    """The trial's value: the summary metric, or |SSR − 1| for ``ssr_*``."""
    value = summary[objective]
    return abs(value - 1.0) if objective.startswith("ssr") else value


def budget_of(sweep: SweepConfig, trials: int | None) -> int:
    """Trials to finish: the whole grid for the grid sampler, else ``trials`` or
    ``sweep.trials``."""
    if sweep.sampler == "grid":
        return sweep.grid_size()
    n = trials if trials is not None else sweep.trials
    if n is None:
        raise SweepError(
            f"the {sweep.sampler} sampler needs a number of trials: --trials N or sweep.trials"
        )
    return n


# ----------------------------------------------------------------------------- storage, study


#: the environment variable that carries the storage URL to workers (and may carry the
#: user's, so that a password is never on a command line: ``ps`` shows argv to everyone)
STORAGE_ENV = "ENSDA_STORAGE"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages, logs and files."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show no part that could be a secret
        return url if "@" not in url else "<storage URL>"


def _require_sqlite_file(url: str) -> None:
    try:
        parsed = make_url(url)
    except Exception:
        return  # open_storage names the bad URL
    path = parsed.database
    if parsed.drivername.startswith("sqlite") and path not in (None, "", ":memory:"):
        if not os.path.exists(path):
            raise SweepError(f"no Optuna storage at {path} ({redact(url)}); is --storage right?")


def open_storage(url: str, sweep: SweepConfig | None = None, create: bool = True):
    """RDB storage; with ``sweep``, heartbeats and the stale-trial retry are on. With
    ``create=False`` (a reader, a joining worker) a SQLite file that does not exist is an
    error instead of a new empty database."""
    if not create:
        _require_sqlite_file(url)

    try:
        with _quiet():
            if sweep is None:
                storage = optuna.storages.RDBStorage(url)
            else:
                storage = optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=sweep.heartbeat_interval,
                    grace_period=sweep.grace_period,
                    heartbeat_stale_trial_callback=_retry_stale,
                )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        raise SweepError(
            f"cannot open the Optuna storage {redact(url)!r}: {_first_line(err)}"
        ) from None
    _serialise_sqlite(storage.engine)
    return storage


def _serialise_sqlite(engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (a no-op on other databases).

    Python's sqlite3 driver opens no transaction for a SELECT, so Optuna's claim of a waiting
    trial (read WAITING, then write RUNNING) is not atomic on SQLite: two workers can both
    read a trial as WAITING and both run it (the second then fails with "Cannot tell a
    COMPLETE trial"). With the driver's own transaction handling off and each transaction
    taking the write lock at its start, the claim is serialised as on PostgreSQL (the
    SQLAlchemy recipe for serialisable pysqlite transactions). Waiting for the lock: up to
    ``SQLITE_TIMEOUT_S``.
    """
    from sqlalchemy import event

    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_TIMEOUT_S * 1000}")

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners (Optuna's schema check) are dropped


def _first_line(err: Exception) -> str:
    """An error without SQLAlchemy's trailing "(Background on this error ...)" lines."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _reason(err: Exception) -> str:
    """A failure's reason as recorded: the exception's type and first line."""
    return f"{type(err).__name__}: {_first_line(err)}"


def stored_config(study) -> ExperimentConfig:
    return validate(study.user_attrs[STUDY_CONFIG])


def _retry_stale(study, trial) -> None:
    """A stale trial (its worker died): fail its MLflow run, queue a retry with its values."""
    run_id = trial.user_attrs.get(RUN_ID)
    if run_id is not None:
        cfg = stored_config(study)
        reason = (
            f"worker lost: no heartbeat for {cfg.sweep.grace_period} s "
            f"(trial {trial.number} retried)"
        )
        tracking.set_status(cfg.tracking, run_id, "FAILED", reason)
    with _quiet():
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def _sampler(sweep: SweepConfig, worker: int):
    """The study's sampler; worker ``i`` seeds it with ``sweep.seed + i`` (distinct streams).

    A grid is the queue of its points (``prepare``), so no sampler picks grid values: every
    trial that runs was enqueued with its values. (Optuna's GridSampler is not used: it does
    not count enqueued trials as visited and fails on them when one point is left.)
    """
    seed = sweep.seed + worker
    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _config_record(cfg: ExperimentConfig) -> dict:
    return cfg.model_dump(mode="json")


def _config_differences(stored: dict, current: dict) -> list[str]:
    a, b = flatten(stored), flatten(current)
    a.pop("sweep.trials", None)
    b.pop("sweep.trials", None)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _current_form(stored: dict, study_name: str) -> dict:
    """A study's stored config as this version of ensda reads it: fields added since the
    study started take their defaults, so a code update alone does not block a resume."""
    try:
        return _config_record(validate(stored))
    except ConfigError as err:
        raise SweepError(
            f"study {study_name!r} was started with a config this version of ensda cannot read: "
            f"{err}"
        ) from None


def prepare(cfg: ExperimentConfig, storage_url: str, study_name: str, trials: int | None = None):
    """Create or resume the study: check the config, set the budget, open the MLflow parent
    run, fail stale trials and enqueue the grid points without a live trial.

    Returns ``(study, budget)``. Raises ``SweepError`` before any trial starts if the
    storage cannot be opened or the study was started with another config.
    """
    if cfg.sweep is None:
        raise SweepError("the config has no sweep: section (objective, sampler, params)")
    budget = budget_of(cfg.sweep, trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url, cfg.sweep)
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=_sampler(cfg.sweep, 0),
            direction=cfg.sweep.direction,
            load_if_exists=True,
        )
    except Exception as err:  # the storage is opened lazily: an unreachable server fails here
        raise SweepError(
            f"cannot open study {study_name!r} in {redact(storage_url)!r}: {_first_line(err)}"
        ) from None
    record = _config_record(cfg)
    stored = study.user_attrs.get(STUDY_CONFIG)
    if stored is None:
        study.set_user_attr(STUDY_CONFIG, record)
    elif diff := _config_differences(_current_form(stored, study_name), record):
        raise SweepError(
            f"study {study_name!r} in {redact(storage_url)} was started with another config "
            f"(differs in {', '.join(diff[:8])}{', ...' if len(diff) > 8 else ''}); "
            "run the same config to resume it, or pass --study NEW for a new sweep"
        )
    study.set_user_attr(STUDY_TRIALS, budget)
    parent_id = study.user_attrs.get(STUDY_PARENT)
    if parent_id is None and cfg.tracking.enabled:
        tags = {
            "optuna.study": study_name,
            "ensda.config": cfg.name,
            "ensda.sweep": cfg.sweep.sampler,
        }
        parent = tracking.start_run(
            cfg.tracking, f"{cfg.name}:sweep:{study_name}", params=flatten(cfg), tags=tags
        )
        study.set_user_attr(STUDY_PARENT, parent.run_id)
    else:
        tracking.set_status(cfg.tracking, parent_id, "RUNNING")
    with _quiet():
        optuna.storages.fail_stale_trials(study)
    requeue_interrupted(study)
    if cfg.sweep.sampler == "grid":
        trials_now = study.get_trials(deepcopy=False)
        held = {_point(_params_of(t)) for t in live_trials(trials_now)}
        for point in cfg.sweep.grid_points():
            if _point(point) not in held:
                study.enqueue_trial(point)
    return study, budget


def finish(study, cfg: ExperimentConfig, budget: int) -> Tally:
    """Close the launch: the MLflow parent run is FINISHED (with the best value) when the
    budget is done, FAILED when it is done but a trial failed for a reason other than
    divergence (``final_errors``), KILLED otherwise (the next launch reopens it)."""
    t = study_tally(study, cfg.sweep)
    errors = final_errors(study.get_trials(deepcopy=False))
    parent = tracking.attach_run(cfg.tracking, study.user_attrs.get(STUDY_PARENT))
    complete = t.done >= budget
    if parent.run_id is not None:
        parent.log_metrics({"trials_complete": t.complete, "trials_failed": t.failed})
        if t.complete:
            parent.log_metrics({"best_" + cfg.sweep.objective: study.best_value})
            parent.set_tags({"optuna.best_trial": study.best_trial.number})
    if not complete:
        status = "KILLED"
        reason = f"incomplete: {t.done} of {budget} trials done; run the same command to resume"
    elif errors:
        status = "FAILED"
        reason = f"{len(errors)} trial(s) failed: " + "; ".join(
            f"{e.number}: {e.user_attrs.get(FAILURE, STALE_REASON)}" for e in errors[:5]
        )
    else:
        status, reason = "FINISHED", None
    tracking.set_status(cfg.tracking, parent.run_id, status, reason)
    return t


# ----------------------------------------------------------------------------- counting


@dataclasses.dataclass(frozen=True)
class Tally:
    done: int  # grid: distinct points with a COMPLETE or FAIL trial
    complete: int
    failed: int
    running: int
    waiting: int

    @property
    def live(self) -> int:
        return self.done + self.running + self.waiting


def _params_of(trial) -> dict:
    return trial.params or trial.system_attrs.get("fixed_params", {})


def _point(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _superseded(trials) -> set[int]:
    """Numbers of failed trials that a retry replaced."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def live_trials(trials) -> list:
    """Trials that count: not pruned, not a failure that a retry replaced, not interrupted
    (the next launch queues the interrupted ones again, ``requeue_interrupted``)."""
    gone = _superseded(trials)
    return [
        t
        for t in trials
        if t.state != TrialState.PRUNED
        and not (t.state == TrialState.FAIL and (t.number in gone or INTERRUPTED in t.user_attrs))
    ]


def requeue_interrupted(study) -> int:
    """Queue a rerun (same values, user attr ``ensda.retry_of``) of every interrupted trial
    that has none yet; returns how many were queued."""
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get(RETRY_OF) for t in trials}
    todo = [
        t
        for t in trials
        if t.state == TrialState.FAIL and INTERRUPTED in t.user_attrs and t.number not in rerun
    ]
    for t in todo:
        study.enqueue_trial(_params_of(t), user_attrs={RETRY_OF: t.number})
    return len(todo)


def final_errors(trials) -> list:
    """The counting trials that failed for a reason other than divergence (a config error,
    an exception, a lost worker out of retries): the sweep ends non-zero when there are any."""
    return [
        t
        for t in live_trials(trials)
        if t.state == TrialState.FAIL and t.user_attrs.get(FAILURE_KIND) != "diverged"
    ]


def tally(trials, grid: bool) -> Tally:
    live = live_trials(trials)
    finished = [t for t in live if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    done = len({_point(t.params) for t in finished}) if grid else len(finished)
    count = lambda state: sum(t.state == state for t in live)  # noqa: E731
    return Tally(
        done,
        count(TrialState.COMPLETE),
        count(TrialState.FAIL),
        count(TrialState.RUNNING),
        count(TrialState.WAITING),
    )


def study_tally(study, sweep: SweepConfig) -> Tally:
    return tally(study.get_trials(deepcopy=False), sweep.sampler == "grid")


# ----------------------------------------------------------------------------- one trial


def suggest(trial, sweep: SweepConfig) -> dict:
    """The trial's values for every swept key active in it (unconditional keys first)."""
    values = {}
    keys = sorted(sweep.params, key=lambda k: sweep.condition(k) is not None)
    for key in keys:
        space = sweep.params[key]
        if not sweep.active(key, values):
            continue
        if (choices := sweep.values_of(key)) is not None:
            values[key] = trial.suggest_categorical(key, choices)
        elif space.integer:
            values[key] = trial.suggest_int(
                key, int(space.low), int(space.high), step=int(space.step or 1), log=space.log
            )
        else:
            values[key] = trial.suggest_float(
                key, space.low, space.high, step=space.step, log=space.log
            )
    return values


def run_trial(
    base: ExperimentConfig, values: dict, trial, study_name: str, parent_id: str | None
) -> float:
    """Run the base config with ``values`` set; log an MLflow child run; return the objective.

    Raises ``TrialFailure`` (reason in the trial's user attr ``ensda.failure``, its kind in
    ``ensda.failure_kind``) if the values make no valid config, the run diverges, the
    objective is not finite or anything else fails (the exception's type and message).
    """

    def failed(reason: str, kind: str):
        trial.set_user_attr(FAILURE, reason)
        trial.set_user_attr(FAILURE_KIND, kind)
        return TrialFailure(reason)

    try:
        cfgs = base.trial_configs(values)
    except ConfigError as err:
        raise failed(str(err), "config") from None
    try:
        return _run_and_log(base, cfgs, trial, study_name, parent_id, failed)
    except TrialFailure:
        raise
    except Exception as err:  # any other reason, recorded as it is (the MLflow run: FAILED)
        raise failed(_reason(err), "error") from None


def _run_and_log(base, cfgs, trial, study_name: str, parent_id, failed) -> float:
    """``run_trial``'s runs and MLflow child run; ``failed(reason, kind)`` makes the error."""
    cfg = cfgs[0]
    objective = base.sweep.objective
    parent = tracking.attach_run(cfg.tracking, parent_id)
    tags = {
        "optuna.study": study_name,
        "optuna.trial_number": trial.number,
        "ensda.device": _jax_device(),
    }
    if base.sweep.replicates:
        tags["ensda.replicates"] = json.dumps(base.sweep.replicates)
    with tracking.method_run(cfg, f"{study_name}:{trial.number}", parent=parent, tags=tags) as run:
        trial.set_user_attr(RUN_ID, run.run_id)
        try:
            osses = [make_osse(c) for c in cfgs]
            results = [run_method(c, o, c.method) for c, o in zip(cfgs, osses)]
        except NonFiniteStateError as err:
            run.fail(str(err))
            raise failed(str(err), "diverged") from None
        except Exception as err:
            run.fail(_reason(err))
            raise
        result = results[0] if len(results) == 1 else replicate_mean(results, run, objective)
        value = objective_value(result.summary, objective)
        trial.set_user_attr(SUMMARY, {k: v for k, v in result.summary.items() if math.isfinite(v)})
        tracking.log_result(run, cfg, result, osses[0])
        if not math.isfinite(value):
            run.fail(f"objective {objective} is {value} for method {cfg.method}")
            raise failed(f"objective {objective} is {value} for method {cfg.method}", "error")
        run.log_metrics({"objective": value})
    return value


def replicate_mean(results: list, run, objective: str):
    """The first replicate's run with the summary averaged over all replicates (each
    replicate's objective and rmse_a are logged as ``replicate_<i>/<name>``); its cycle
    metrics and figures are the first replicate's."""
    summary = {k: float(np.mean([r.summary[k] for r in results])) for k in results[0].summary}
    run.log_metrics(
        {
            f"replicate_{i}/{k}": r.summary[k]
            for i, r in enumerate(results)
            for k in dict.fromkeys((objective, "rmse_a"))
        }
    )
    return dataclasses.replace(results[0], summary=summary)


def _jax_device() -> str:
    """The device this process computes on (JAX's default device), e.g. ``TFRT_CPU_2``,
    ``cuda:0``."""
    return str(jax.config.jax_default_device or jax.devices()[0])


# ----------------------------------------------------------------------------- worker


def _objective(study, base: ExperimentConfig, budget: int, device: str):
    grid = base.sweep.sampler == "grid"

    def objective(trial):
        objective.current = trial.number
        trials = study.get_trials(deepcopy=False)
        me = next(t for t in trials if t.number == trial.number)
        if grid:
            if "fixed_params" not in me.system_attrs:
                raise optuna.TrialPruned(
                    "not a queued grid point: another worker emptied the queue"
                )
            point = _point(_params_of(me))
            for t in live_trials(trials):
                held = t.state in (TrialState.COMPLETE, TrialState.FAIL) or t.number < me.number
                if t.number != me.number and held and _point(_params_of(t)) == point:
                    raise optuna.TrialPruned(f"grid point held by trial {t.number}")
        elif sum(t.number < me.number for t in live_trials(trials)) >= budget:
            raise optuna.TrialPruned("the trial budget is taken")
        values = suggest(trial, base.sweep)
        trial.set_user_attr(DEVICE, device)
        trial.set_user_attr(JAX_DEVICE, _jax_device())
        try:
            return run_trial(
                base, values, trial, study.study_name, study.user_attrs.get(STUDY_PARENT)
            )
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (``_signals_interrupt``): runs again
            trial.set_user_attr(INTERRUPTED, True)
            raise

    objective.current = None
    return objective


def _taken_over(study, number: int | None) -> bool:
    """Was trial ``number`` failed as stale by another process while this one ran it?
    (Its heartbeat was late, e.g. on an overloaded machine; the retry runs it again.)"""
    if number is None:
        return False
    trial = study.get_trials(deepcopy=False)[number]
    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and FAILURE not in attrs and INTERRUPTED not in attrs


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGINT raise ``KeyboardInterrupt`` here (main thread only), so a terminated
    worker marks its trial interrupted, as Ctrl-C does, and the trial runs again on resume.
    SIGINT is set too because a process started as a background job inherits it ignored
    (Python then installs no Ctrl-C handler), and ``kill -INT`` must still interrupt it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_worker(
    storage_url: str,
    study_name: str,
    worker: int = 0,
    device: str = "",
    report: Callable | None = None,
) -> int:
    """Take trials from the study until its budget is done; returns the number of trials run.

    While the remaining trials run elsewhere it waits (a dead worker's trial turns stale
    after the grace period and comes back as a waiting retry). ``report(tally)`` is called
    on every round.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(
            study_name=study_name, storage=open_storage(storage_url, create=False)
        )
        base = stored_config(study)
    except KeyError:
        raise SweepError(
            f"no sweep {study_name!r} in {redact(storage_url)}: start it with `ensda sweep`"
        ) from None
    study = optuna.load_study(
        study_name=study_name,
        storage=open_storage(storage_url, base.sweep),
        sampler=_sampler(base.sweep, worker),
    )
    budget = study.user_attrs[STUDY_TRIALS]
    study.set_user_attr(
        f"{WORKER}.{worker}",
        {
            "device": _jax_device(),
            "label": device,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
    )
    with _signals_interrupt():
        return _take_trials(study, base, budget, device, report)


def _take_trials(study, base: ExperimentConfig, budget: int, device: str, report) -> int:
    grid = base.sweep.sampler == "grid"
    objective = _objective(study, base, budget, device)
    n_run = 0
    while True:
        with _quiet():
            optuna.storages.fail_stale_trials(study)
        t = tally(study.get_trials(deepcopy=False), grid)
        if report is not None:
            report(t)
        if t.done >= budget:
            return n_run
        if t.waiting or (not grid and t.live < budget):
            try:
                with _quiet():
                    study.optimize(objective, n_trials=1, catch=(TrialFailure,))
            except Exception:
                if not _taken_over(study, objective.current):
                    raise
                print(
                    f"ensda sweep: trial {objective.current} lost its heartbeat and was retried "
                    "elsewhere",
                    file=sys.stderr,
                )
            n_run += 1
        elif t.running == 0:
            raise SweepError(
                f"grid incomplete ({t.done} of {budget} points) with no trial queued: run `ensda "
                "sweep` to queue the rest"
            )
        else:
            time.sleep(POLL_S)


# ----------------------------------------------------------------------------- launching workers


def gpu_count() -> int:
    """GPUs visible to ``nvidia-smi -L`` (0 without it, or when JAX_PLATFORMS excludes GPUs)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return 0
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def host_device_count(xla_flags: str) -> int:
    """N of ``--xla_force_host_platform_device_count=N`` in ``xla_flags`` (1 without it)."""
    counts = [
        f.split("=", 1)[1]
        for f in xla_flags.split()
        if f.startswith("--xla_force_host_platform_device_count=")
    ]
    return int(counts[-1]) if counts else 1


def worker_setups(
    k: int, gpus: int, cores: list[int], xla_flags: str | None = None
) -> list[tuple[dict, str, list[int] | None]]:
    """(environment changes, device label, CPU cores or None) for each of ``k`` workers.

    GPUs: worker i sees GPU i mod G only (no memory preallocation when workers share one).
    CPU: an equal share of the cores each (round robin when there are more workers than
    cores) and one CPU device: with ``--xla_force_host_platform_device_count=N`` in
    ``xla_flags`` (default ``$XLA_FLAGS``; N CPU devices, e.g. to try multi-device set-ups on
    CPU) worker i computes on CPU device i mod N (``ENSDA_JAX_DEVICE``, read by the worker),
    else the flag is dropped and each worker has the one default CPU device.
    """
    xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    n_host = host_device_count(xla_flags)
    setups = []
    for i in range(k):
        if gpus:
            env = {"CUDA_VISIBLE_DEVICES": str(i % gpus)}
            if k > gpus:
                env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
            setups.append((env, f"gpu {i % gpus}", None))
            continue
        share = (
            cores[i * len(cores) // k : (i + 1) * len(cores) // k]
            if k <= len(cores)
            else [cores[i % len(cores)]]
        )
        where = f"cores {','.join(map(str, share))}"
        if n_host > 1:
            env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags, JAX_DEVICE_ENV: str(i % n_host)}
            setups.append((env, f"cpu device {i % n_host} ({where})", share))
        else:
            flags = " ".join(
                f for f in xla_flags.split() if "xla_force_host_platform_device_count" not in f
            )
            setups.append(({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}, f"cpu ({where})", share))
    return setups


def supervise(procs: list[subprocess.Popen], poll: Callable, report: Callable) -> list[int]:
    """``report(poll())`` while the worker processes run, and once after; their exit codes.
    On Ctrl-C the workers are stopped (SIGTERM; their trials are retried by the next launch)
    and the ``KeyboardInterrupt`` goes on."""
    try:
        while any(p.poll() is None for p in procs):
            report(poll())
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    report(poll())
    return [p.returncode for p in procs]


def start_workers(storage_url: str, study_name: str, k: int) -> list[subprocess.Popen]:
    """Start ``k`` worker processes on this machine, each pinned to one device."""
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i, (env, label, cpus) in enumerate(worker_setups(k, gpu_count(), cores)):
        cmd = [
            sys.executable,
            "-m",
            "ensda.cli",
            "sweep-worker",
            "--study",
            study_name,
            "--index",
            str(i),
            "--device",
            label,
        ]
        if cpus is not None:
            cmd += ["--cpus", ",".join(map(str, cpus))]
        env = os.environ | env | {STORAGE_ENV: storage_url}  # not in argv (see STORAGE_ENV)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    return procs


def worker_main(
    storage_url: str, study_name: str, index: int = 0, device: str = "", cpus: str | None = None
) -> None:
    """One worker process (``ensda sweep-worker``, as ``start_workers`` starts it): pinned to
    the cores ``cpus`` (comma-separated) and to the JAX device of ``$ENSDA_JAX_DEVICE`` when
    set, it takes trials of the study until its budget is done."""
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    if JAX_DEVICE_ENV in os.environ:
        jax.config.update("jax_default_device", jax.devices()[int(os.environ[JAX_DEVICE_ENV])])
    run_worker(storage_url, study_name, index, device)
