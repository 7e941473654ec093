"""MLflow tracking — the only module that imports mlflow (lazily: it costs ~2 s).

    with tracked_run(cfg.tracking, run_name="letkf", params=flatten(cfg)) as run:
        run.log_metrics(summary)                 # time means: rmse_a, crps_a, ssr_a, ...
        run.log_cycle_metrics(result)            # cycle/rmse_a, ... with step = cycle
        run.log_figure(fig, "error_spread.png")

Store: ``tracking.uri`` from the config, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory (MLflow's own default); artifacts go to
``./mlruns``. ``tracked_run(..., parent=run)`` opens a nested child run (``ensda compare``);
a sweep's parent run lives across processes: ``start_run``, ``attach_run``, ``set_status``.
With tracking disabled every call is a no-op. ``Store`` reads runs back (``ensda report``):
a run, its child runs, its artifacts (listed, JSON loaded, files or directories downloaded);
and logs files to an existing run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ensda.cycle import channel_summary, rank_histogram_counts
from ensda.schema import flatten

DEFAULT_URI = "sqlite:///mlflow.db"
#: per-cycle metrics logged by ``log_cycle_metrics`` as ``cycle/<name>`` with step = cycle
#: (name -> CycleResult field, take sqrt?); the plain names hold the time means.
CYCLE_PREFIX = "cycle/"
CYCLE_METRICS = {
    "rmse_f": ("mse_f", True),
    "rmse_a": ("mse_a", True),
    "spread_f": ("spread2_f", True),
    "spread_a": ("spread2_a", True),
    "crps_f": ("crps_f", False),
    "crps_a": ("crps_a", False),
}
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class Run:
    """An open MLflow run."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.failed = False

    def fail(self, reason: str) -> None:
        """Mark the run FAILED when it closes, with the reason as tag ``ensda.failure``."""
        self.failed = True
        self.client.set_tag(self.run_id, "ensda.failure", reason[:5000])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, values: dict[str, float], step: int = 0) -> None:
        self._log_series({k: ([step], [v]) for k, v in values.items()})

    def log_cycle_metrics(
        self, result, n_members: int | None = None, channels: dict[str, int] | None = None
    ) -> None:
        """Every cycle's RMSE, spread and CRPS of forecast and analysis as ``cycle/<name>``,
        step = cycle; with ``channels`` (name → channel index, sphere runs) also each one's as
        ``cycle/<name>.<channel>``."""
        steps = np.arange(1, result.n_cycles + 1)
        n = result.n_members if n_members is None else n_members
        series = {}
        for name, (field, root) in CYCLE_METRICS.items():
            if name.startswith("spread") and n < 2:
                continue
            columns = {"": getattr(result, field)}
            columns.update(
                {
                    f".{ch}": getattr(result, f"channel_{field}")[:, c]
                    for ch, c in (channels or {}).items()
                }
            )
            for suffix, values in columns.items():
                values = np.asarray(values, np.float64)
                series[CYCLE_PREFIX + name + suffix] = (steps, np.sqrt(values) if root else values)
        self._log_series(series)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_figure(self, fig, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name)

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_dataset(self, ds, name: str) -> None:
        """An ``xarray.Dataset`` as the artifact directory ``name`` (zarr v3, unconsolidated)."""
        with tempfile.TemporaryDirectory() as tmp:
            ds.to_zarr(os.path.join(tmp, name), mode="w", consolidated=False, zarr_format=3)
            self.client.log_artifacts(self.run_id, tmp)

    def _log_series(self, series: dict[str, tuple]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = []
        for name, (steps, values) in series.items():
            for s, v in zip(steps, values):
                v = float(v)
                if math.isfinite(v):
                    batch.append(Metric(name, v, ts, int(s)))
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + _BATCH])


class NullRun:
    """Tracking disabled: accepts every call, records nothing."""

    run_id = None
    experiment_id = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def tracked_run(
    tracking,
    run_name: str,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    parent: Run | None = None,
) -> Iterator[Run | NullRun]:
    """Open an MLflow run (a child of ``parent`` if given); FAILED if the body raises, KILLED
    if it is interrupted (Ctrl-C)."""
    if not tracking.enabled:
        yield NullRun()
        return
    run = start_run(tracking, run_name, params, tags, parent)
    try:
        yield run
    except KeyboardInterrupt:
        run.client.set_tag(run.run_id, "ensda.failure", "interrupted")
        run.client.set_terminated(run.run_id, status="KILLED")
        raise
    except BaseException:
        run.client.set_terminated(run.run_id, status="FAILED")
        raise
    run.client.set_terminated(run.run_id, status="FAILED" if run.failed else "FINISHED")


def config_tags(cfg) -> dict[str, str]:
    """The tags every run of ``cfg`` carries: its config and method names."""
    return {"ensda.config": cfg.name, "ensda.method": cfg.method}


def method_run(cfg, run_name: str, parent: Run | None = None, tags: dict[str, Any] | None = None):
    """``tracked_run`` of one method's run of ``cfg`` (the method of ``cfg.method``): the
    flattened config and the member count as params, the config and method names (and
    ``tags``) as tags; the one way ``ensda run``, ``compare`` and sweep trials open a run."""
    params = flatten(cfg) | {"n_members": cfg.members_for(cfg.method)}
    tags = config_tags(cfg) | (tags or {})
    return tracked_run(cfg.tracking, run_name, params=params, tags=tags, parent=parent)


def log_result(run: Run | NullRun, cfg, result, osse=None) -> None:
    """Log a finished ``MethodRun`` of ``cfg`` into ``run`` (metrics, figures) and, with
    ``osse``, its observations."""
    log_method_run(run, result, cfg.burn_in, cfg.tracking.figures)
    if osse is not None:
        log_observations(run, osse)


def log_comparison(cfg, names, osse, runs, records, wall_s: float, tuned_file=None) -> str | None:
    """``ensda compare``'s runs: a parent run (the config without ``method``, the methods, the
    tuned-settings file) holding ``comparison.json`` (``records``), the observations and the
    wall time, and a child run per method (``method_run``; FAILED with the reason for a run
    that diverged). Returns the parent's run id (None with tracking off)."""
    params = flatten(cfg) | {"methods": ",".join(names)}
    params.pop("method", None)
    if tuned_file is not None:
        params["tuned_file"] = str(tuned_file)
    with tracked_run(cfg.tracking, f"{cfg.name}:compare", params, config_tags(cfg)) as parent:
        for r in runs:
            child_cfg = cfg.model_copy(update={"method": r.method})
            with method_run(child_cfg, f"{cfg.name}:{r.method}", parent=parent) as child:
                if isinstance(r, Exception):
                    child.fail(str(r))
                else:
                    log_result(child, cfg, r)
        parent.log_dict({"results": records}, "comparison.json")
        log_observations(parent, osse)
        parent.log_metrics({"wall_s": wall_s})
    return parent.run_id


def _client(tracking):
    return _client_for(tracking_uri(tracking.uri))


def _client_for(uri: str):
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # after import: mlflow sets its own levels on import
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


#: tags of the experiments ensda creates: MLflow 3's UI opens an experiment of this kind on
#: its runs table (metrics, params, charts) instead of the GenAI traces overview
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def start_run(
    tracking,
    run_name: str,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    parent: Run | None = None,
) -> Run:
    """Create an MLflow run and leave it RUNNING (``tracked_run`` closes it; a sweep's parent
    run stays open across worker processes and launches, see ``attach_run``/``end_run``)."""
    client = _client(tracking)
    experiment = client.get_experiment_by_name(tracking.experiment)
    exp_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(tracking.experiment, tags=EXPERIMENT_TAGS)
    )
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    if parent is not None and parent.run_id is not None:
        all_tags["mlflow.parentRunId"] = parent.run_id
    mlrun = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    run = Run(client, mlrun.info.run_id, exp_id)
    if params:
        run.log_params(params)
    return run


def attach_run(tracking, run_id: str | None) -> Run | NullRun:
    """An existing run (e.g. a parent created by another process); NullRun if tracking is off."""
    if not tracking.enabled or run_id is None:
        return NullRun()
    client = _client(tracking)
    return Run(client, run_id, client.get_run(run_id).info.experiment_id)


def set_status(tracking, run_id: str | None, status: str, reason: str | None = None) -> None:
    """Set a run's status: RUNNING (reopened: an earlier failure reason is dropped), FINISHED,
    FAILED or KILLED (with ``reason`` as tag ``ensda.failure``)."""
    if not tracking.enabled or run_id is None:
        return
    client = _client(tracking)
    if reason is not None:
        client.set_tag(run_id, "ensda.failure", reason[:5000])
    if status == "RUNNING":
        if "ensda.failure" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "ensda.failure")
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_method_run(run: Run | NullRun, method_run, burn_in: int, figures: bool = True) -> None:
    """Log one method's cycled run: summary metrics (``lead_time_loss_h`` when on the curve,
    the tag ``ensda.lead_time_loss`` always: "12.3 h" or "> 192 h"), per-cycle metrics (on the
    sphere also those of the headline channels),
    timings, figures (error/spread, rank histogram, RMSE against lead),
    ``rank_histogram.json`` (the counts after burn-in, ensembles only) and
    ``lead_time.json`` (the two RMSE-vs-lead curves). On the sphere also
    ``channel_metrics.json`` (every channel's time-mean rmse, spread, crps, ssr of background
    and analysis in SI units, and its climatological σ) and, with figures, ``channel_rmse.png``
    and ``maps/<channel>.png`` for each headline channel (``ensda.testbeds.sphere.figures``)."""
    if isinstance(run, NullRun):
        return
    from ensda import run_figures as figs

    summary = {k: v for k, v in method_run.summary.items() if isinstance(v, (int, float))}
    summary.update(
        compile_s=method_run.compile_s,
        run_s=method_run.run_s,
        wall_s=method_run.compile_s + method_run.run_s,
    )
    run.log_metrics(summary)
    sphere = method_run.sphere
    run.log_cycle_metrics(
        method_run.result, method_run.n_members, {} if sphere is None else sphere.headline_index
    )
    run.log_params({f"settings.{k}": v for k, v in method_run.settings.items()})
    run.log_dict({"method": method_run.method, "settings": method_run.settings}, "settings.json")
    if figures:
        title = f"{method_run.method}"
        fig = figs.error_spread_figure(method_run.result, burn_in, title)
        run.log_figure(fig, "error_spread.png")
        figs.close(fig)
        if method_run.n_members > 1:
            fig = figs.rank_histogram_figure(method_run.result, burn_in, title)
            run.log_figure(fig, "rank_histogram.png")
            figs.close(fig)
    if (
        method_run.n_members > 1
    ):  # the counts as data (reports redraw them; the PNG is for browsing)
        counts = np.rint(rank_histogram_counts(method_run.result, burn_in)).astype(np.int64)
        run.log_dict(
            {"counts": counts.tolist(), "n_members": method_run.n_members, "burn_in": burn_in},
            "rank_histogram.json",
        )
    if sphere is not None:
        _log_sphere(run, method_run, burn_in, figures)
    if method_run.lead_time is not None:
        lt = method_run.lead_time
        run.set_tags({"ensda.lead_time_loss": lt.loss.text})
        run.log_dict(
            {
                "leads_h": lt.leads_h.tolist(),
                "rmse_reference": lt.reference_curve.tolist(),
                "rmse_analysis": lt.analysis_curve.tolist(),
                "lead_h": float(lt.loss.lead_h),
                "lead_time_loss_h": float(lt.loss.loss_h),
                "lead_time_loss": lt.loss.text,
                "n_starts": lt.n_starts,
            },
            "lead_time.json",
        )
        if figures:
            fig = figs.lead_time_figure(lt, method_run.method)
            run.log_figure(fig, "lead_time.png")
            figs.close(fig)


def log_observations(run: Run | NullRun, osse) -> None:
    """On the sphere, the OSSE's observations (locations, values, errors, valid times;
    ``GlobalObsNetwork.dataset``) as the artifact ``observations.zarr``; nothing on Lorenz-96
    (its sites are the config's)."""
    if isinstance(run, NullRun) or not hasattr(osse.network, "dataset"):
        return
    times = getattr(osse, "truth_times", None)
    run.log_dataset(
        osse.network.dataset(osse.obs, None if times is None else times[1:]), "observations.zarr"
    )


def _log_sphere(run: Run, method_run, burn_in: int, figures: bool) -> None:
    """Per-channel time means as ``channel_metrics.json``; with figures, their bar chart and
    the last-cycle maps of the headline channels."""
    sphere = method_run.sphere
    per = channel_summary(method_run.result, burn_in)
    run.log_dict(
        {
            "channels": list(sphere.names),
            "burn_in": burn_in,
            "climatological_std": sphere.channel_std.tolist(),
        }
        | {k: v.tolist() for k, v in per.items()},
        "channel_metrics.json",
    )
    if not figures:
        return
    from ensda import run_figures as figs
    from ensda.testbeds.sphere import figures as sfigs

    fig = sfigs.channel_rmse_figure(per, sphere, method_run.method)
    run.log_figure(fig, "channel_rmse.png")
    figs.close(fig)
    fields = sfigs.last_cycle_fields(method_run.result, sphere)
    for channel in sphere.headline:
        fig = sfigs.channel_maps_figure(
            fields, sphere, channel, f"{method_run.method}, cycle {method_run.result.n_cycles}:"
        )
        run.log_figure(fig, f"maps/{channel}.png")
        figs.close(fig)


# ----------------------------------------------------------------------------- reading runs back


class TrackingError(RuntimeError):
    """A tracking store that cannot be read, or a run that is not in it; the message says which."""


@dataclasses.dataclass(frozen=True)
class StoredRun:
    """One MLflow run as read back: summary metrics are the latest value of each metric."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    start_time: int | None  # ms since the epoch
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def parent_id(self) -> str | None:
        return self.tags.get("mlflow.parentRunId")


class Store:
    """Read access to a tracking store (``uri`` as ``tracking_uri``), for reports.

    Raises ``TrackingError`` when the store cannot be reached (a sqlite file that does not
    exist, a server that does not answer) and for a run id that is not in it.
    """

    def __init__(self, uri: str | None = None):
        self.uri = tracking_uri(uri)
        _check_reachable(self.uri)
        self.client = _client_for(self.uri)
        try:
            self.client.search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 - any backend failure is "cannot read"
            raise TrackingError(
                f"cannot read the MLflow tracking store {self.uri}: {_first_line(err)}"
            ) from None

    def run(self, run_id: str) -> StoredRun:
        from mlflow.exceptions import MlflowException

        try:
            return _stored(self.client.get_run(run_id))
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise TrackingError(f"no run {run_id!r} in the MLflow store {self.uri}") from None
            raise TrackingError(
                f"cannot read run {run_id!r} from {self.uri}: {_first_line(err)}"
            ) from None

    def children(self, run: StoredRun) -> list[StoredRun]:
        """The child runs of ``run`` (in its experiment), oldest first; deleted runs left out."""
        out, token = [], None
        while True:
            page = self.client.search_runs(
                [run.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'",
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            out += [_stored(r) for r in page]
            token = page.token
            if not token:
                return out

    def experiment_name(self, experiment_id: str) -> str:
        return self.client.get_experiment(experiment_id).name

    def artifacts(self, run_id: str, path: str | None = None) -> set[str]:
        """Paths of the run's top-level artifacts, or of those directly under the artifact
        directory ``path`` (e.g. ``maps`` -> ``{"maps/geopotential_500.png", ...}``)."""
        return {a.path for a in self.client.list_artifacts(run_id, path)}

    def download(self, run_id: str, path: str, dest: str | os.PathLike) -> str:
        """Copy the artifact ``path`` of the run (a file, or a directory with everything in it,
        e.g. ``maps`` or ``observations.zarr``) into the existing directory ``dest``; returns
        the local path of the copy."""
        with _env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
            return self.client.download_artifacts(run_id, path, str(dest))

    def load_json(self, run_id: str, path: str) -> Any:
        """A JSON artifact of the run (``log_dict``)."""
        with (
            tempfile.TemporaryDirectory() as tmp,
            _env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"),
        ):
            local = self.client.download_artifacts(run_id, path, tmp)
            with open(local) as f:
                return json.load(f)

    def log_files(self, run_id: str, paths: list, artifact_path: str | None = None) -> None:
        """Log local files as artifacts of an existing run (finished runs included)."""
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment variables set for the body (MLflow reads some of its switches per call)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stored(run) -> StoredRun:
    return StoredRun(
        run.info.run_id,
        run.info.run_name or "",
        run.info.experiment_id,
        run.info.status,
        run.info.start_time,
        dict(run.data.params),
        dict(run.data.metrics),
        dict(run.data.tags),
    )


def _check_reachable(uri: str) -> None:
    """Fail fast (``TrackingError``) on a sqlite file that does not exist (MLflow would create
    an empty store) and on an HTTP server that does not answer (MLflow would retry for minutes)."""
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        path = uri[len("sqlite:///") :]
        if not os.path.isfile(path):
            raise TrackingError(
                f"no MLflow tracking store at {os.path.abspath(path)} ({uri}); "
                "pass --uri or set MLFLOW_TRACKING_URI"
            )
    elif uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri}: {getattr(err, 'reason', err)}"
            ) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
