"""The diffusion assimilator end to end: training, checkpoints, analysis, bad input, sharding.

A tiny model is trained once per session on the Lorenz-96 testbed (small data, a few
hundred steps); the quality checks use what such a model can do (it must beat the
background it is given), the full-size numbers are in the closing notes and scripts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda import experiment
from ensda.config import ConfigError, validate
from ensda.diffusion import checkpoint
from ensda.diffusion.samplers import SamplerConfig, nfe
from ensda.nn import ring_graph
from ensda.training import train

TINY_TRAIN = {
    "perturbed_samples": 3000,
    "error_min": 0.3,
    "error_max": 1.5,
    "members": 10,
    "sources": [
        {"obs": {"every": 2}, "method": "etkf", "settings": {"inflation": 1.03}, "cycles": 1500}
    ],
    "validation": 300,
    "latent": 16,
    "message_steps": 2,
    "frequencies": 8,
    "steps": 600,
    "batch": 64,
    "lr": 0.003,
    "warmup": 50,
    "log_every": 100,
    "density_min": 0.25,
    "density_max": 0.5,
    "every_choices": [2],
}


def tiny_config(checkpoint, **extra) -> dict:
    base = {
        "cycles": 120,
        "burn_in": 20,
        "ensemble": {"size": 8},
        "obs": {"every": 2},
        "method": "diffusion",
        "methods": {"diffusion": {"checkpoint": str(checkpoint), "steps": 8}},
        "tracking": {"enabled": False},
        "train": TINY_TRAIN | {"checkpoint": str(checkpoint)},
    }
    for key, value in extra.items():
        base[key] = value
    return base


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "l96-tiny"
    cfg = validate(tiny_config(path))
    result = train(cfg)
    return cfg, path, result


def test_training_reduces_the_loss_and_writes_a_checkpoint(trained):
    cfg, path, result = trained
    assert (path / "params.npz").exists() and (path / "meta.json").exists()
    # with F = 0 the denoiser is D = c_skip z, whose EDM loss is exactly E[z²]/σ_d² = 1 for
    # targets of unit mean square (z = (t - x_b)/s, s the RMS increment); training must beat it
    assert result.val_loss[-1] < 0.8, result.val_loss
    meta = json.loads((path / "meta.json").read_text())
    assert meta["testbed"]["n"] == 40 and meta["training"]["steps"] == cfg.train.steps
    assert meta["config"]["train"]["latent"] == 16


def test_checkpoint_round_trip(trained):
    cfg, path, _ = trained
    a = checkpoint.load_checkpoint(path, checkpoint.testbed_record(experiment.make_testbed(cfg)))
    b = checkpoint.load_checkpoint(path)
    x = jnp.linspace(-1, 1, 40 * 5).reshape(1, 40, 5)
    graph = ring_graph(40)
    out_a = a.model(graph, x, jnp.ones((1,)))
    out_b = b.model(graph, x, jnp.ones((1,)))
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
    assert float(jnp.abs(out_a).max()) > 0  # a trained network, not the zero-initialised one


def test_one_analysis_beats_the_background_with_spread_of_the_right_size(trained):
    """(c) of the issue, for single analyses: backgrounds of the kind the model was trained on
    (one-cycle forecasts of perturbed truths, error 1), every 2nd site observed. The analysis
    mean beats the background mean and the ensemble spread is within a factor of two of the
    analysis error (RMSE over 20 cases)."""
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    assim = experiment.build_assimilator(cfg, osse, "diffusion")
    forecast = jax.jit(osse.testbed.cycle_forecast)
    analyse = jax.jit(assim.analyse)
    err_b, err_a, spread_a = [], [], []
    for k in range(10, 110, 5):
        key = jax.random.key(k)
        centre = osse.truth[k - 1] + jax.random.normal(key, (40,))
        xf = forecast(centre + jax.random.normal(jax.random.fold_in(key, 1), (8, 40)))
        xa = analyse(xf, osse.obs.at(k - 1), key)
        err_b.append(float(jnp.mean((xf.mean(0) - osse.truth[k]) ** 2)))
        err_a.append(float(jnp.mean((xa.mean(0) - osse.truth[k]) ** 2)))
        spread_a.append(float(jnp.mean(xa.var(0, ddof=1))))
    rmse_b, rmse_a, spread = (float(np.sqrt(np.mean(v))) for v in (err_b, err_a, spread_a))
    assert rmse_a < rmse_b, (rmse_a, rmse_b)
    assert 0.5 < spread / rmse_a < 2.0, (spread, rmse_a)


def test_cycled_diffusion_runs_and_reports_nfe(trained):
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    run = experiment.run_method(cfg, osse, "diffusion")
    s = run.summary
    assert np.isfinite(s["rmse_a"]) and s["rmse_a"] < s["rmse_f"], s
    assert s["nfe"] == nfe(SamplerConfig(steps=8)) == 15


def test_runtime_network_calls_equal_the_reported_nfe(trained):
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    for settings in (
        {"steps": 5},
        {"steps": 4, "sampler": "dpm2s"},
        {"steps": 3, "repaint_jumps": 2, "obs_channels": False},
    ):
        assim = experiment.build_assimilator(
            cfg, osse, "diffusion", {"checkpoint": cfg.train.checkpoint} | settings
        )
        ens = osse.truth[1] + jax.random.normal(jax.random.key(0), (8, 40))
        _, count = jax.jit(assim.sample_increments)(ens, osse.obs.at(0), jax.random.key(1))
        assert np.all(np.asarray(count) == assim.nfe), (settings, count, assim.nfe)


def test_guidance_moves_members_towards_the_observations(trained):
    """Likelihood guidance alone (no observation channels): the analysis fits the observed
    sites better than the unguided prior model does (same keys)."""
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    obs = osse.obs.at(5)
    ens = osse.truth[6] + 1.0 * jax.random.normal(jax.random.key(3), (8, 40))
    guided = experiment.build_assimilator(
        cfg,
        osse,
        "diffusion",
        {
            "checkpoint": cfg.train.checkpoint,
            "steps": 8,
            "obs_channels": False,
            "guidance_strength": 1.0,
        },
    )
    prior = dataclasses.replace(
        guided, guidance_strength=0.0
    )  # build refuses a method that ignores y
    fits = {}
    for name, assim in (("guided", guided), ("prior", prior)):
        xa = assim.analyse(ens, obs, jax.random.key(4))
        fits[name] = float(jnp.sqrt(jnp.mean((xa.mean(0)[obs.idx] - obs.y) ** 2)))
    assert fits["guided"] < 0.8 * fits["prior"], fits


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"guidance_strength": -1.0}, "guidance_strength"),
        ({"steps": 0}, "steps"),
        ({"sampler": "euler"}, "sampler"),
        ({"obs_channels": False}, "no observation conditioning"),
    ],
)
def test_bad_settings_are_named(trained, settings, message):
    cfg, path, _ = trained
    data = tiny_config(path)
    data["assimilator"] = settings
    with pytest.raises((ConfigError, ValueError), match=message):
        c = validate(data)
        experiment.build_assimilator(c, experiment.make_osse(c), "diffusion")


def test_missing_and_mismatched_checkpoints_are_clear_errors(trained, tmp_path):
    cfg, path, _ = trained
    missing = validate(tiny_config(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="ensda train"):
        experiment.build_assimilator(missing, experiment.make_osse(missing), "diffusion")
    other = tiny_config(path, testbed={"n": 20})
    other["train"] = None
    small = validate(other)
    with pytest.raises(ValueError, match=r"another testbed \(n: checkpoint 40, run 20"):
        experiment.build_assimilator(small, experiment.make_osse(small), "diffusion")


def test_nonlinear_operator_needs_guidance(trained):
    cfg, path, _ = trained
    data = tiny_config(path, obs={"every": 2, "operator": "square"})
    c = validate(data)
    with pytest.raises(ValueError, match="identity observation operator"):
        experiment.build_assimilator(c, experiment.make_osse(c), "diffusion")
    data["methods"]["diffusion"] |= {"obs_channels": False, "guidance_strength": 1.0}
    c = validate(data)
    experiment.build_assimilator(c, experiment.make_osse(c), "diffusion")  # accepted


def test_sharded_ensemble_equals_unsharded(trained):
    """With 4 (forced) CPU devices the members are sharded along 'ens'; same result."""
    _, path, _ = trained
    script = textwrap.dedent(f"""
        import jax, numpy as np
        assert len(jax.devices()) == 4, jax.devices()
        from ensda import experiment
        from ensda.config import validate
        import tests.test_diffusion_da as t
        cfg = validate(t.tiny_config({str(path)!r}))
        osse = experiment.make_osse(cfg)
        ens = osse.truth[1] + jax.random.normal(jax.random.key(0), (8, 40))
        out = {{}}
        for shard in (True, False):
            settings = {{"checkpoint": {str(path)!r}, "steps": 6, "shard": shard}}
            a = experiment.build_assimilator(cfg, osse, "diffusion", settings)
            xa = jax.jit(a.analyse)(ens, osse.obs.at(0), jax.random.key(2))
            out[shard] = xa
        print("SHARDING", out[True].sharding)
        np.testing.assert_allclose(
            np.asarray(out[True]), np.asarray(out[False]), rtol=1e-5, atol=1e-5
        )
        print("EQUAL")
    """)
    env = os.environ | {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "EQUAL" in done.stdout


def test_increment_localisation_on_the_ring(trained):
    """On Lorenz-96 ``localisation`` is in sites: every 2nd site observed, so each site is
    0 or 1 site from an observation and ρ = GC(d / c) with d ∈ {0, 1}. With c = 0.4 (zero
    beyond 0.8) the unobserved sites keep the forecast members and the observed ones take
    the unlocalised analysis; with c = 1 the unobserved sites blend with GC(1) = 5/24."""
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    plain = experiment.build_assimilator(cfg, osse, "diffusion")
    key = jax.random.key(7)
    xf = osse.testbed.cycle_forecast(osse.truth[9] + jax.random.normal(key, (8, 40)))
    obs = osse.obs.at(9)
    xa = np.asarray(plain.analyse(xf, obs, key))
    observed = np.zeros(40, bool)
    observed[np.asarray(obs.idx)] = True
    for c, rho_between in ((0.4, 0.0), (1.0, 5.0 / 24.0)):
        local = experiment.build_assimilator(
            cfg, osse, "diffusion", cfg.method_settings("diffusion") | {"localisation": c}
        )
        xl = np.asarray(local.analyse(xf, obs, key))
        np.testing.assert_allclose(xl[:, observed], xa[:, observed], atol=1e-5)
        expected = np.asarray(xf)[:, ~observed] + rho_between * (xa - np.asarray(xf))[:, ~observed]
        np.testing.assert_allclose(xl[:, ~observed], expected, atol=1e-5)
