"""`ensda tune`: TPE over a method's settings on other seeds, stored per set-up, used by compare.

Tiny budgets (2 trials, short runs, tracking off). References: the best trial's value is
recomputed with ``run_method`` on the tuning seeds' configs written by hand (an
independent path), and compare's JSON is read back for the settings it ran with.
"""

import json

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from ensda import config, tune
from ensda.cli import app
from ensda.experiment import make_osse, run_method

CONFIG = "experiments/configs/l96.yaml"
SHORT = [
    "cycles=120",
    "burn_in=20",
    "ensemble.size=10",
    "testbed.climatology_samples=300",
    "testbed.spinup_steps=300",
    "tracking.enabled=false",
    "lead_time.enabled=false",
]
runner = CliRunner()


def sets(*items):
    return [a for item in (*SHORT, *items) for a in ("--set", item)]


def test_search_spaces_and_seeds():
    cfg = config.load(CONFIG, SHORT)
    tcfg = tune.tune_config(cfg, "letkf", seeds=[300, 400], trials=5)
    assert (
        tcfg.method == "letkf" and tcfg.sweep.sampler == "tpe" and tcfg.sweep.objective == "rmse_a"
    )
    assert (
        tcfg.sweep.params["methods.letkf.radius"].high == 20.0
        and tcfg.sweep.params["methods.letkf.radius"].log
    )
    assert tcfg.sweep.replicates[1] == {
        "seeds.truth": 400,
        "seeds.obs": 401,
        "seeds.ensemble": 402,
        "seeds.assimilator": 403,
        "seeds.lead_time": 404,
    }
    # a random network drawn once keeps its obs seed (it draws the sites)
    dens = config.load(CONFIG, [*SHORT, "obs.every=1", "obs.density=0.5"])
    assert "seeds.obs" not in tune.seed_overrides(dens, 300)
    with pytest.raises(tune.TuneError, match="own seeds.truth"):
        tune.tune_config(cfg, "letkf", seeds=[0, 300])
    with pytest.raises(tune.TuneError, match="no search space for method 'none'"):
        tune.tune_config(cfg, "none")
    # on the sphere: radii and lengths in km and ln p, oi refused (its dense B does not fit)
    sphere = config.load("experiments/configs/sphere.yaml")
    space = tune.search_space(sphere, "letkf")
    assert (
        space["methods.letkf.radius"]["high"] == 8000.0 and "methods.letkf.vertical_radius" in space
    )
    assert None in tune.search_space(sphere, "3dvar")["methods.3dvar.vertical_length"]
    with pytest.raises(tune.TuneError, match="no search space for method 'oi' on this testbed"):
        tune.tune_config(sphere, "oi", seeds=[300])
    # the set-up id follows the network, not the method settings or seeds
    assert tune.setup_id(cfg) == tune.setup_id(
        config.load(CONFIG, [*SHORT, "methods.letkf.radius=3", "seeds.truth=7"])
    )
    assert tune.setup_id(cfg) != tune.setup_id(config.load(CONFIG, [*SHORT, "obs.every=2"]))


def test_tune_stores_the_best_and_compare_uses_it(tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    cfg_path = str(request.config.rootpath / CONFIG)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cmd = [
        "tune",
        cfg_path,
        "--method",
        "letkf",
        "--trials",
        "2",
        "--seeds",
        "300,400",
        "--storage",
        storage,
        *sets(),
    ]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    cfg = config.load(cfg_path, SHORT)
    name = f"tune:{cfg.name}:letkf:{tune.setup_id(cfg)}"
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    best = study.best_trial
    settings = {k.removeprefix("methods.letkf."): v for k, v in best.params.items()}
    assert set(settings) == {"inflation", "rtps", "radius"} and 1.0 <= settings["inflation"] <= 1.1

    # the value: mean rmse_a over the two tuning seeds, recomputed by hand
    direct = []
    for s in (300, 400):
        c = config.load(
            cfg_path,
            [
                *SHORT,
                f"seeds.truth={s}",
                f"seeds.obs={s + 1}",
                f"seeds.ensemble={s + 2}",
                f"seeds.assimilator={s + 3}",
                f"seeds.lead_time={s + 4}",
            ],
        )
        direct.append(
            run_method(c, make_osse(c), "letkf", c.method_settings("letkf") | settings).summary[
                "rmse_a"
            ]
        )
    assert best.value == pytest.approx(sum(direct) / 2, rel=1e-5)

    path = tmp_path / "tuned" / f"{tune.setup_id(cfg)}.yaml"
    stored = yaml.safe_load(path.read_text())
    assert stored["methods"]["letkf"]["settings"] == settings and stored["methods"]["letkf"][
        "seeds"
    ] == [300, 400]
    assert stored["setup"]["obs"]["every"] == 1

    # the same command again: the study is resumed, nothing new runs
    assert runner.invoke(app, cmd).exit_code == 0
    assert len(optuna.load_study(study_name=name, storage=storage).get_trials()) == 2

    def compare(*extra):
        out = runner.invoke(
            app, ["compare", cfg_path, "--methods", "letkf,3dvar", *sets(*extra), "--json"]
        )
        assert out.exit_code == 0, out.output
        return out, json.loads(out.stdout.strip().splitlines()[-1])

    out, rec = compare()
    assert f"tuned settings ({path.relative_to(tmp_path)}): letkf" in out.stderr
    assert rec["tuned"]["file"] == str(path.relative_to(tmp_path))
    by = {r["method"]: r for r in rec["results"]}
    assert {k: by["letkf"]["settings"][k] for k in settings} == settings
    assert by["3dvar"]["settings"] == cfg.method_settings("3dvar")  # not tuned: the config's
    # --set still wins over the tuned value
    _, rec = compare("methods.letkf.inflation=1.05")
    assert {r["method"]: r for r in rec["results"]}["letkf"]["settings"]["inflation"] == 1.05
    # another network: no tuned settings for it
    out, rec = compare("obs.every=2")
    assert rec["tuned"] is None and "tuned settings: none" in out.stderr
