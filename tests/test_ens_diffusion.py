"""``ens-diffusion``: the LETKF-anchored residual diffusion ensemble (ensda.diffusion.anchored).

Reference behaviour checked here:
- a zero residual (denoiser D ≡ 0) gives every member the LETKF analysis mean, which is
  computed independently by the registered ``letkf`` method with the same settings;
- the untrained network (F = 0: N(0, 1) residuals) with ``coupling: anchor`` transports the
  LETKF ensemble: same mean, same anomaly correlations across sites, spread scaled by the
  sampler's map of N(0, 1) (1.011 at 20 Heun steps from σ_max 5, measured in
  ``test_sampler_scale``); with ``coupling: independent`` those correlations are lost;
- the features against a NumPy computation; training data bookkeeping; config errors.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ensda import assimilator as registry
from ensda import experiment
from ensda.checkpoint import CheckpointError
from ensda.config import validate
from ensda.diffusion import anchored, checkpoint
from ensda.diffusion.edm import EDM
from ensda.nn import GNNConfig
from ensda.training.anchored import DIVERGENCE_MARGIN, SKIP_CYCLES, kept_cycles, train_anchored

LETKF = {"radius": 6.0, "inflation": 1.03, "rtps": 0.2}


def setup(tmp_path, every=4, members=20, **settings):
    """An OSSE on every ``every``-th site, an untrained anchored checkpoint, the method built on
    it and a background ensemble with flow-dependent anomalies (forecasts of an LETKF run)."""
    spec = anchored.AnchoredSpec(
        40, GNNConfig(latent=16, steps=2, n_frequencies=4), EDM(sigma_max=5.0)
    )
    norm = anchored.AnchorNormalisation(np.float32(0.0), np.float32(3.6), np.float32(0.5))
    path = tmp_path / "anchored"
    params = nnx.split(spec.build(0))[1]
    cfg = validate(
        {
            "cycles": 60,
            "burn_in": 10,
            "obs": {"every": every},
            "ensemble": {"size": members},
            "method": "letkf",
            "methods": {"letkf": LETKF},
            "tracking": {"enabled": False},
        }
    )
    osse = experiment.make_osse(cfg)
    anchored.save(
        path,
        params,
        spec,
        norm,
        checkpoint.testbed_record(cfg.testbed),
        {"operator": "identity", "r_std": 1.0},
        {},
        {},
    )
    settings = {
        "checkpoint": str(path),
        "anchor_radius": LETKF["radius"],
        "anchor_inflation": LETKF["inflation"],
        "anchor_rtps": LETKF["rtps"],
        "steps": 20,
    } | settings
    method = experiment.build_assimilator(cfg, osse, "ens-diffusion", settings)
    letkf = experiment.build_assimilator(cfg, osse, "letkf", LETKF)
    run = experiment.run_method(cfg, osse, "letkf", LETKF)
    background = osse.forecast_model.cycle_forecast(run.result.final_ensemble)
    return method, letkf, background, osse.obs.at(cfg.cycles - 1)


def test_zero_residual_reproduces_the_letkf_mean(tmp_path, monkeypatch):
    monkeypatch.setattr(
        anchored.AnchoredDiffusionDA, "denoiser", lambda self, cond: lambda z, s: jnp.zeros_like(z)
    )
    method, letkf, background, obs = setup(tmp_path)
    key = jax.random.key(5)
    reference = letkf.analyse(background, obs, jax.random.split(key)[0]).mean(0)
    for coupling in ("affine", "anchor", "independent", "ecc"):
        out = dataclasses.replace(method, coupling=coupling).analyse(background, obs, key)
        np.testing.assert_allclose(
            np.asarray(out), np.broadcast_to(np.asarray(reference), out.shape), atol=1e-5
        )
    assert float(jnp.abs(reference - background.mean(0)).max()) > 0.1  # the LETKF moved the mean


def _correlation(ens):
    a = np.asarray(ens - ens.mean(0), np.float64)
    c = a.T @ a
    d = np.sqrt(np.diag(c))
    return c / np.outer(d, d)


def test_coupled_members_keep_the_anchor_structure_when_the_residual_is_gaussian(tmp_path):
    method, letkf, background, obs = setup(tmp_path, coupling="anchor")
    key = jax.random.key(5)
    anchor_ens = letkf.analyse(background, obs, jax.random.split(key)[0])
    out = method.analyse(background, obs, key)
    np.testing.assert_allclose(np.asarray(out.mean(0)), np.asarray(anchor_ens.mean(0)), atol=1e-4)
    ratio = np.asarray(out.std(0) / anchor_ens.std(0))
    assert np.all(np.abs(ratio - 1.011) < 0.01), ratio  # the sampler's scale of N(0, 1) (s_a ≈ σ_a)
    corr_anchor, corr_out = _correlation(anchor_ens), _correlation(out)
    np.testing.assert_allclose(corr_out, corr_anchor, atol=2e-3)
    near = np.abs(np.subtract.outer(np.arange(40), np.arange(40))) == 1
    assert np.abs(corr_anchor[near]).mean() > 0.3  # there is structure to keep
    independent = dataclasses.replace(method, coupling="independent").analyse(background, obs, key)
    assert np.abs(_correlation(independent) - corr_anchor)[near].mean() > 0.3


def test_ecc_members_take_the_anchor_ranks_and_the_model_marginals(tmp_path):
    method, letkf, background, obs = setup(tmp_path, coupling="ecc")
    key = jax.random.key(5)
    anchor_ens = np.asarray(letkf.analyse(background, obs, jax.random.split(key)[0]))
    out = np.asarray(method.analyse(background, obs, key))
    independent = np.asarray(
        dataclasses.replace(method, coupling="independent").analyse(background, obs, key)
    )
    ranks = lambda e: np.argsort(np.argsort(e, axis=0), axis=0)  # noqa: E731
    np.testing.assert_array_equal(ranks(out), ranks(anchor_ens))  # the anchor's rank structure
    np.testing.assert_allclose(
        np.sort(out, axis=0), np.sort(independent, axis=0), atol=1e-5
    )  # the samples
    # antithetic pairs: the F = 0 model's samples are symmetric about the anchor mean
    np.testing.assert_allclose(out.mean(0), anchor_ens.mean(0), atol=1e-4)
    ratio = out.std(0, ddof=1) / anchor_ens.std(0, ddof=1)
    assert 0.6 < np.median(ratio) < 1.5  # N(0, 1) z: the anchor's spread up to sampling error
    assert np.abs(_correlation(out) - _correlation(anchor_ens)).mean() < 0.15


def test_affine_members_keep_the_anchor_correlations_exactly(tmp_path):
    method, letkf, background, obs = setup(tmp_path)  # coupling: affine (the default)
    key = jax.random.key(5)
    anchor_ens = np.asarray(letkf.analyse(background, obs, jax.random.split(key)[0]))
    out = np.asarray(method.analyse(background, obs, key))
    samples = np.asarray(
        dataclasses.replace(method, coupling="independent").analyse(background, obs, key)
    )
    np.testing.assert_allclose(_correlation(out), _correlation(anchor_ens), atol=1e-4)
    np.testing.assert_allclose(out.mean(0), samples.mean(0), atol=1e-4)  # the model's mean ...
    np.testing.assert_allclose(
        out.std(0, ddof=1), samples.std(0, ddof=1), rtol=1e-3
    )  # ... and spread
    mean_only = np.asarray(
        dataclasses.replace(method, spread="anchor").analyse(background, obs, key)
    )
    np.testing.assert_allclose(
        mean_only - mean_only.mean(0), anchor_ens - anchor_ens.mean(0), atol=1e-4
    )
    np.testing.assert_allclose(mean_only.mean(0), samples.mean(0), atol=1e-4)


def test_sampler_scale():
    """The probability-flow map of exact N(0, 1) data, 20 Heun steps from σ_max = 5."""
    from ensda.diffusion.samplers import SamplerConfig, sample

    edm = EDM(sigma_max=5.0)
    z, count = sample(
        lambda z, s: z / (1 + s**2),
        jax.random.key(0),
        (1,),
        edm,
        SamplerConfig("heun", 20),
        np.sqrt(26.0) * jnp.ones(1),
    )
    assert abs(float(z[0]) - 1.011) < 1e-3 and int(count) == 39


def test_features_against_numpy():
    rng = np.random.default_rng(0)
    n, members = 30, 6
    bg = rng.normal(size=(members, n)).astype(np.float32)
    an = (bg * 0.5 + 0.1).astype(np.float32)
    sites = np.array([2, 7])
    from ensda.observe import Observations

    obs = Observations(
        y=jnp.asarray([1.0, -2.0]), idx=jnp.asarray(sites), r_std=jnp.ones(2), operator="arctan"
    )
    d = np.minimum(
        np.abs(np.subtract.outer(np.arange(n), np.arange(n))),
        n - np.abs(np.subtract.outer(np.arange(n), np.arange(n))),
    )
    s = anchored.summarise(jnp.asarray(bg), jnp.asarray(an), obs, jnp.asarray(d, jnp.float32))
    norm = anchored.AnchorNormalisation(np.float32(1.0), np.float32(2.0), np.float32(0.5))
    f = np.asarray(anchored.features(norm, s))
    innov = np.zeros(n)
    innov[sites] = np.array([1.0, -2.0]) - np.arctan(an[:, sites]).mean(0)
    nearest = np.min(d[:, sites], axis=1)
    expected_std = np.ones(n)
    expected_std[sites] = np.sqrt(np.arctan(an[:, sites]).var(0, ddof=1) + 1.0)
    # the localised innovation consistency, with the Gaspari–Cohn taper written out
    hb = np.arctan(bg[:, sites].astype(np.float64))
    d2 = (np.array([1.0, -2.0]) - hb.mean(0)) ** 2
    var = hb.var(0, ddof=1) + 1.0
    r = d[:, sites] / anchored.CONSISTENCY_RADIUS
    gc = np.where(
        r <= 1,
        -0.25 * r**5 + 0.5 * r**4 + 0.625 * r**3 - 5 / 3 * r**2 + 1,
        np.where(
            r < 2,
            r**5 / 12
            - 0.5 * r**4
            + 0.625 * r**3
            + 5 / 3 * r**2
            - 5 * r
            + 4
            - 2 / (3 * np.maximum(r, 1e-12)),
            0.0,
        ),
    )
    near = gc.sum(1) > 0
    g = np.ones(n)
    g[near] = (gc @ d2)[near] / (gc @ var)[near]
    assert not near.all() and near.any()  # both branches are exercised
    expect = np.stack(
        [
            (bg.mean(0) - 1) / 2,
            bg.std(0, ddof=1) / 0.5,
            (an.mean(0) - bg.mean(0)) / 0.5,
            an.std(0, ddof=1) / 0.5,
            innov / 0.5,
            innov / expected_std,
            np.isin(np.arange(n), sites),
            np.minimum(nearest / 10, 1),
            np.clip(0.5 * np.log(g), -3, 3),
        ],
        -1,
    )
    np.testing.assert_allclose(f, expect, rtol=1e-5, atol=1e-5)


def test_kept_cycles_skip_spin_up_and_the_blow_up():
    k = 300
    finite = np.ones((2, k), bool)
    finite[1, 200:] = False
    keep = kept_cycles(finite)
    assert keep[0].sum() == k - SKIP_CYCLES and not keep[0, :SKIP_CYCLES].any()
    assert (
        keep[1].sum() == 200 - DIVERGENCE_MARGIN - SKIP_CYCLES
        and not keep[1, 200 - DIVERGENCE_MARGIN :].any()
    )


TINY = {
    "target": "anchored",
    "perturbed_samples": 0,
    "runs": 2,
    "members": 8,
    "validation": 50,
    "latent": 8,
    "message_steps": 1,
    "frequencies": 4,
    "steps": 40,
    "batch": 16,
    "log_every": 20,
    "sigma_max": 5.0,
    "sources": [{"obs": {"every": 4}, "method": "letkf", "cycles": 120}],
}


def test_training_writes_a_checkpoint_the_method_loads(tmp_path):
    cfg = validate(
        {
            "cycles": 30,
            "burn_in": 5,
            "obs": {"every": 4},
            "ensemble": {"size": 8},
            "method": "ens-diffusion",
            "tracking": {"enabled": False},
            "methods": {"ens-diffusion": {"checkpoint": str(tmp_path / "ck"), "steps": 20}},
            "train": TINY | {"checkpoint": str(tmp_path / "ck")},
        }
    )
    lines = []
    result = train_anchored(cfg, report=lines.append)
    kept = 2 * (120 - SKIP_CYCLES)
    assert result.n_train == kept - min(50, kept // 5) and np.isfinite(result.val_loss).all()
    assert any("round 0, source 0" in line for line in lines)
    run = experiment.run_method(cfg, experiment.make_osse(cfg), "ens-diffusion")
    assert np.isfinite(run.summary["crps_a"]) and run.summary["nfe"] == 39


def test_self_cycled_rounds_cycle_with_the_configured_coupling_and_spread(tmp_path, monkeypatch):
    """A DAgger round cycles the model as the experiment will run it (``methods.ens-diffusion``),
    not with the method's defaults (affine coupling, model spread)."""
    from ensda.training import anchored as training

    seen = []
    real = training.cycled_examples

    class Seen(Exception):
        pass

    def spy(cfg, src_index, round_index, method):
        if method is not None:  # the round's method is all this test needs; stop there
            seen.append((round_index, method.coupling, method.spread))
            raise Seen
        return real(cfg, src_index, round_index, method)

    monkeypatch.setattr(training, "cycled_examples", spy)
    cfg = validate(
        {
            "obs": {"every": 4},
            "ensemble": {"size": 8},
            "methods": {"ens-diffusion": {"coupling": "ecc", "spread": "global"}},
            "train": TINY
            | {
                "checkpoint": str(tmp_path / "ck"),
                "rounds": 1,
                "round_runs": 1,
                "round_cycles": 110,
                "steps": 5,
                "round_steps": 5,
                "round_sampler_steps": 2,
            },
        }
    )
    with pytest.raises(Seen):
        train_anchored(cfg)
    assert seen == [(1, "ecc", "global")]


def test_rescaled_backgrounds_double_the_examples_with_the_same_truth_and_mean():
    from ensda.training.anchored import cycled_examples

    cfg = validate(
        {
            "obs": {"every": 4},
            "ensemble": {"size": 8},
            "train": TINY | {"spread_scale": [0.5, 1.5], "max_anchor_rmse": 1.5},
        }
    )
    ex, _ = cycled_examples(cfg, 0, 0, None)
    half = len(ex) // 2
    assert len(ex) == 2 * half and half > 0
    own, scaled = ex.take(np.arange(half)), ex.take(np.arange(half, 2 * half))
    np.testing.assert_array_equal(own.truth, scaled.truth)
    np.testing.assert_allclose(own.summary.mean_b, scaled.summary.mean_b, atol=1e-5)
    kappa = np.asarray(scaled.summary.spread_b) / np.asarray(own.summary.spread_b)
    assert np.allclose(kappa, kappa[:, :1], rtol=1e-4)  # one κ per example, all sites
    assert 0.5 - 1e-4 <= kappa.min() and kappa.max() <= 1.5 + 1e-4
    assert kappa.max() - kappa.min() > 0.5  # drawn, not fixed
    # an over-confident background (κ < 1) shows in the consistency ratio g
    g_own = np.asarray(own.summary.consistency).mean(1)
    g_scaled = np.asarray(scaled.summary.consistency).mean(1)
    low = kappa[:, 0] < 0.7
    assert (g_scaled[low] > g_own[low]).mean() > 0.9


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sources": [], "perturbed_samples": 10}, "needs train.sources"),
        (
            {
                "sources": [
                    {
                        "obs": {"every": 4},
                        "method": "letkf",
                        "settings": {"radius": 4.0},
                        "cycles": 100,
                    }
                ]
            },
            "without settings",
        ),
        ({"anchor_radius": [10.0, 4.0]}, "anchor_radius: low"),
    ],
)
def test_config_errors(change, message):
    with pytest.raises(Exception, match=message):
        validate({"train": TINY | change})


def test_an_increment_checkpoint_is_refused_with_the_reason(tmp_path):
    from ensda.checkpoint import write_checkpoint

    write_checkpoint(tmp_path, {"w": np.zeros(1)}, {"format": 1, "testbed": {}, "spec": {}})
    with pytest.raises(CheckpointError, match="not an ens-diffusion"):
        anchored.load(tmp_path)
    assert "ens-diffusion" in registry.methods()


def test_an_ens_diffusion_checkpoint_is_refused_by_the_diffusion_loader(tmp_path):
    from ensda.checkpoint import write_checkpoint
    from ensda.diffusion.checkpoint import load_checkpoint

    write_checkpoint(
        tmp_path, {"w": np.zeros(1)}, {"format": 1, "model": "anchored", "testbed": {}, "spec": {}}
    )
    with pytest.raises(CheckpointError, match="use it with method ens-diffusion"):
        load_checkpoint(tmp_path)


def test_an_ens_diffusion_checkpoint_of_another_format_is_refused_with_the_reason(tmp_path):
    from ensda.checkpoint import write_checkpoint

    meta = {"format": anchored.FORMAT - 1, "model": "anchored", "testbed": {}, "spec": {}}
    write_checkpoint(tmp_path, {"w": np.zeros(1)}, meta)
    with pytest.raises(CheckpointError, match="retrain it"):
        anchored.load(tmp_path)
