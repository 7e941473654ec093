"""Baseline tuning (``ensda tune``): TPE over a method's settings, stored per set-up.

A tuning run is an Optuna sweep (``ensda.sweep``: RDB storage, workers, heartbeats,
resume, MLflow parent/child runs) of the config with

- ``method`` = the tuned method and ``sweep.params`` = its search space
  ``methods.<method>.<setting>`` from ``SEARCH_SPACES`` (one table, below);
- ``sweep.replicates`` = the tuning seeds: each trial is run once per tuning seed and
  scored by the mean objective, on **other seeds than the evaluation's**: seed s sets
  ``seeds.truth = s``, ``seeds.obs = s + 1``, ``seeds.ensemble = s + 2``,
  ``seeds.assimilator = s + 3``, ``seeds.lead_time = s + 4`` (``seeds.obs`` is kept for a
  random network drawn once, ``obs.density`` without ``obs.redraw``: that seed draws the
  network, which must stay the one being tuned for). Seeds equal to the config's own
  truth seed are refused (and so is ``train.seed``, the diffusion model's training truth,
  when the config has a ``train`` section). Default seeds: 300 and 400.

The best trial's settings are written to ``tuned/<set-up id>.yaml`` (``tuned_path``):
the set-up id is a hash of what the settings depend on — testbed, forecast model,
observation network, ensemble — so a config with another network (e.g. ``--set
obs.every=2``) does not pick up settings tuned for this one. ``ensda compare`` reads the
file (``find_tuned``) and uses each tuned method's settings over ``methods.<method>``
of the config (``--set`` overrides still win), and says which it used.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from ensda.config import ExperimentConfig, SweepRange, validate
from ensda.experiment import runs_on

#: Search spaces per method: setting -> a range (``SweepRange``: low, high, log, int) or a
#: list of values (categorical). ``radius`` ranges are in grid units; their top is capped
#: at half the ring (``testbed.n / 2``), beyond which the localisation is global.
#: Categorical values may include None (a setting left unset).
SEARCH_SPACES: dict[str, dict[str, SweepRange | list]] = {
    "etkf": {"inflation": SweepRange(low=1.0, high=1.1), "rtps": SweepRange(low=0.0, high=0.9)},
    "enkf": {
        "inflation": SweepRange(low=1.0, high=1.15),
        "rtps": SweepRange(low=0.0, high=0.9),
        "radius": SweepRange(low=1.0, high=20.0, log=True),
    },
    **{
        m: {
            "inflation": SweepRange(low=1.0, high=1.1),
            "rtps": SweepRange(low=0.0, high=0.9),
            "radius": SweepRange(low=1.0, high=20.0, log=True),
        }
        for m in ("letkf", "ensrf")
    },
    "3dvar": {
        "b_source": ["climatology", "nmc"],
        "scale": SweepRange(low=0.01, high=5.0, log=True),
    },
    "oi": {"radius": [None, 1.0, 1.5, 2.0, 4.0, 8.0]},
}
#: Per testbed kind, the entries that replace the method's entry above there: on the sphere
#: radii and correlation lengths in km (great circle) and ln p, 3D-Var's B from the
#: climatology only.
TESTBED_SEARCH_SPACES: dict[str, dict[str, dict[str, SweepRange | list]]] = {
    "sphere": {
        **{
            m: {
                "inflation": SweepRange(low=1.0, high=1.3),
                "rtps": SweepRange(low=0.0, high=0.95),
                "radius": SweepRange(low=500.0, high=8000.0, log=True),
                "vertical_radius": SweepRange(low=0.2, high=4.0, log=True),
            }
            for m in ("letkf", "enkf", "ensrf")
        },
        "3dvar": {
            "scale": SweepRange(low=0.01, high=2.0, log=True),
            "length_km": SweepRange(low=200.0, high=4000.0, log=True),
            "vertical_length": [None, 0.25, 0.5, 1.0, 2.0],
        },
    }
}
DEFAULT_SEEDS = (300, 400)
TUNED_DIR = Path("tuned")
SEED_OFFSETS = {"truth": 0, "obs": 1, "ensemble": 2, "assimilator": 3, "lead_time": 4}


class TuneError(ValueError):
    """A tuning request that cannot run (no search space, bad seeds); the message says why."""


def search_space(cfg: ExperimentConfig, method: str) -> dict[str, Any]:
    """``sweep.params`` for ``method``: ``methods.<method>.<setting>`` -> range or values."""
    spaces = SEARCH_SPACES | TESTBED_SEARCH_SPACES.get(cfg.testbed.kind, {})
    if method not in spaces or not runs_on(cfg, method):
        tunable = sorted(m for m in spaces if runs_on(cfg, m))
        raise TuneError(
            f"no search space for method {method!r} on this testbed; tunable methods: "
            f"{', '.join(tunable)}"
        )
    params = {}
    for key, space in spaces[method].items():
        if (
            key == "radius"
            and isinstance(space, SweepRange)
            and (top := cfg.testbed_kind.max_radius(cfg)) is not None
        ):
            space = space.model_copy(update={"high": min(space.high, top)})
        params[f"methods.{method}.{key}"] = (
            space.model_dump() if isinstance(space, SweepRange) else list(space)
        )
    return params


def seed_overrides(cfg: ExperimentConfig, seed: int) -> dict[str, int]:
    """The seeds of one tuning replicate (module docstring)."""
    out = {f"seeds.{name}": seed + offset for name, offset in SEED_OFFSETS.items()}
    if cfg.obs.density is not None and not cfg.obs.redraw:
        del out["seeds.obs"]  # it draws the network being tuned for
    return out


def tune_config(
    cfg: ExperimentConfig,
    method: str,
    objective: str = "rmse_a",
    seeds=DEFAULT_SEEDS,
    trials: int = 30,
    seed: int = 0,
) -> ExperimentConfig:
    """The sweep config of a tuning run (its ``sweep:`` section replaced)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise TuneError("no tuning seeds")
    if cfg.seeds.truth in seeds:
        raise TuneError(
            f"tuning seed {cfg.seeds.truth} is the config's own seeds.truth: tune on other seeds "
            "than the evaluation's"
        )
    train = getattr(cfg, "train", None)
    if train is not None and train.seed in seeds:
        raise TuneError(
            f"tuning seed {train.seed} is train.seed (the diffusion model's training truth): pick "
            "other seeds"
        )
    data = cfg.model_dump(exclude={"sweep"}) | {"method": method}
    data["sweep"] = {
        "objective": objective,
        "direction": "minimize",
        "sampler": "tpe",
        "seed": seed,
        "trials": trials,
        "params": search_space(cfg, method),
        "replicates": [seed_overrides(cfg, s) for s in seeds],
    }
    return validate(data)


def setup_record(cfg: ExperimentConfig) -> dict:
    """What tuned settings depend on: testbed, forecast model, observation network, ensemble."""
    return cfg.model_dump(mode="json", include={"testbed", "forecast_model", "obs", "ensemble"})


def setup_id(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(json.dumps(setup_record(cfg), sort_keys=True).encode()).hexdigest()[:12]


def tuned_path(cfg: ExperimentConfig, directory: str | Path = TUNED_DIR) -> Path:
    return Path(directory) / f"{setup_id(cfg)}.yaml"


def write_tuned(
    cfg: ExperimentConfig,
    method: str,
    settings: dict,
    record: dict,
    directory: str | Path = TUNED_DIR,
) -> Path:
    """Store ``method``'s best ``settings`` (with ``record``: study, objective, value, ...) in
    the set-up's tuned file; other methods already there are kept."""
    path = tuned_path(cfg, directory)
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    data = data or {"setup": setup_record(cfg), "methods": {}}
    data["config"] = cfg.name
    data["methods"][method] = {
        "settings": settings,
        **record,
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Tuned method settings for one set-up (testbed, forecast model, observation network,\n"
        "# ensemble), written by `ensda tune`; `ensda compare` uses them. See ensda/tune.py.\n"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)  # atomic: a reader sees the old file or the new one, never half of one
    return path


def find_tuned(
    cfg: ExperimentConfig, directory: str | Path = TUNED_DIR
) -> tuple[Path, dict] | None:
    """(path, {method: entry}) of the set-up's tuned file, or None when there is none."""
    path = tuned_path(cfg, directory)
    if not path.exists():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    return path, data.get("methods", {})


def tuned_overrides(entries: dict, methods: list[str]) -> dict[str, Any]:
    """Dotted config values ``methods.<method>.<setting>`` of the tuned ``methods``."""
    return {
        f"methods.{m}.{k}": v
        for m in methods
        if m in entries
        for k, v in entries[m]["settings"].items()
    }


def best_settings(study, method: str) -> dict:
    """The best trial's settings of ``method`` (its ``methods.<method>.*`` values)."""
    prefix = f"methods.{method}."
    return {
        k.removeprefix(prefix): v
        for k, v in study.best_trial.params.items()
        if k.startswith(prefix)
    }
