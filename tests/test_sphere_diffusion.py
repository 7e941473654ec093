"""Diffusion DA on the sphere: the channel layout, the pooled normalisation, the training
data from anomaly-perturbed truths, and a tiny denoiser trained and cycled end to end.

References: NumPy re-computations (layout, pooled statistics, nearest observed column by
great-circle distance), the statistics of the perturbation scheme (mean error e·√(1+1/N),
spread e in climatological units, for an identity forecast), the EDM loss of the untrained
network (exactly E[z²] = 1 for normalised increments), and RePaint with a hard mask, whose
last step puts the observed increment at every observed element (analysis = y there).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dinosaur")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from test_sphere_cycle import sw_experiment, sw_store  # noqa: E402,F401  (the tiny nature-run store)

from ensda import experiment  # noqa: E402
from ensda.config import ConfigError, validate  # noqa: E402
from ensda.diffusion import checkpoint  # noqa: E402
from ensda.diffusion.data import Normalisation, Pairs, anomaly_perturbed_pairs  # noqa: E402
from ensda.diffusion.edm import EDM  # noqa: E402
from ensda.diffusion.model import (
    ModelSpec,
    SphereMesh,
    WithElementwise,
    build_network,
    from_nodes,
    network_fn,
    to_nodes,
)  # noqa: E402
from ensda.nn import GNNConfig  # noqa: E402
from ensda.training import train  # noqa: E402

TINY_TRAIN = {
    "perturbed_samples": 60,
    "members": 4,
    "error_min": 0.1,
    "error_max": 1.0,
    "validation": 12,
    "refinement": 1,
    "latent": 16,
    "message_steps": 2,
    "frequencies": 8,
    "density_min": 0.02,
    "density_max": 0.3,
    "steps": 600,
    "batch": 8,
    "lr": 0.003,
    "warmup": 30,
    "log_every": 200,
    "store_times": [0, 30],
}


def sphere_config(store, ckpt, **extra) -> dict:
    base = sw_experiment(
        store,
        cycles=6,
        burn_in=2,
        method="diffusion",
        methods={"diffusion": {"checkpoint": str(ckpt), "steps": 6}},
        ensemble={"size": 6, "init": "climatology"},
    )
    base["testbed"] = base["testbed"] | {"truth_start": 32}  # after the training window (0..29)
    base["train"] = TINY_TRAIN | {"checkpoint": str(ckpt)}
    return base | extra


@pytest.fixture(scope="module")
def trained(sw_store, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("ckpt") / "sphere-tiny"
    cfg = validate(sphere_config(sw_store, path))
    return cfg, path, train(cfg)


def test_nodes_layout_is_channel_major():
    rng = np.random.default_rng(0)
    c, g = 3, 10
    x = rng.normal(size=(2, c * g)).astype(np.float32)
    nodes = np.asarray(to_nodes(jnp.asarray(x)[..., None], c))
    assert nodes.shape == (2, g, c)
    np.testing.assert_array_equal(nodes, x.reshape(2, c, g).transpose(0, 2, 1))
    np.testing.assert_array_equal(np.asarray(from_nodes(jnp.asarray(nodes))), x)
    feats = rng.normal(size=(c * g, 4)).astype(np.float32)  # per node: channel-major blocks of 4
    np.testing.assert_array_equal(np.asarray(to_nodes(jnp.asarray(feats), c))[7, 4:8], feats[g + 7])


def test_elementwise_path_starts_as_the_gnn_and_sees_only_its_own_element():
    """``ModelSpec.elementwise``: a new model's output is the bare GNN's (same key, the
    path's last layer zero); the path's term at element i depends on element i's features
    only (its Jacobian is diagonal); the spec round-trips and an older spec (no key) reads
    as the GNN alone; gated (``elementwise_observed_only``) the term is the ungated one
    times the observation mask."""
    spec0 = ModelSpec(
        n=3 * 12,
        gnn=GNNConfig(latent=8, steps=1, n_frequencies=4),
        edm=EDM(),
        obs_r_std=(1.0, 2.0, 3.0),
        sphere=SphereMesh(4, 3, refinement=0),
    )
    spec = ModelSpec(**(vars(spec0) | {"elementwise": 8}))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert (
        ModelSpec.from_dict({k: v for k, v in spec0.to_dict().items() if k != "elementwise"})
        == spec0
    )
    bare, model = build_network(spec0, spec0.graph(), 3), build_network(spec, spec.graph(), 3)
    assert isinstance(model, WithElementwise) and not isinstance(bare, WithElementwise)
    rng = np.random.default_rng(2)
    cond = jnp.asarray(rng.normal(size=(spec.n, 4)), jnp.float32)
    z = jnp.asarray(rng.normal(size=(2, spec.n)), jnp.float32)
    c_noise = jnp.asarray([-0.5, 0.7])
    np.testing.assert_array_equal(
        np.asarray(network_fn(model, spec.graph(), cond, 3)(z, c_noise)),
        np.asarray(network_fn(bare, spec0.graph(), cond, 3)(z, c_noise)),
    )

    last = model.elementwise.layers[-1]  # a trained path: non-zero last layer
    last.kernel[...] = jnp.asarray(rng.normal(size=last.kernel[...].shape), jnp.float32)
    features = jnp.asarray(rng.normal(size=(spec.n, 5)), jnp.float32)
    term = model.element_term(features, jnp.float32(0.3))
    jac = np.asarray(
        jax.jacfwd(lambda f: model.element_term(f, jnp.float32(0.3)))(features)
    )  # (n, n, 5)
    off = jac.copy()
    off[np.arange(spec.n), np.arange(spec.n)] = 0.0
    assert np.abs(off).max() == 0.0 and np.abs(jac[np.arange(spec.n), np.arange(spec.n)]).max() > 0
    # the same MLP for every element: permuting the elements permutes the term
    perm = rng.permutation(spec.n)
    np.testing.assert_allclose(
        np.asarray(model.element_term(features[perm], jnp.float32(0.3))),
        np.asarray(term)[perm],
        rtol=1e-6,
    )
    # observed_only: the term times the mask (the last feature), zero where nothing is observed
    gated_spec = ModelSpec(**(vars(spec) | {"elementwise_observed_only": True}))
    assert ModelSpec.from_dict(gated_spec.to_dict()) == gated_spec
    gated = build_network(gated_spec, gated_spec.graph(), 3)
    gated.elementwise.layers[-1].kernel[...] = last.kernel[...]
    mask = jnp.asarray(rng.random(spec.n) < 0.3, jnp.float32)
    masked = features.at[:, -1].set(mask)
    np.testing.assert_allclose(
        np.asarray(gated.element_term(masked, jnp.float32(0.3))),
        np.asarray(model.element_term(masked, jnp.float32(0.3))) * np.asarray(mask),
        rtol=1e-6,
    )
    assert float(jnp.abs(gated.element_term(masked, jnp.float32(0.3))).sum()) > 0


def test_normalisation_pools_within_groups():
    rng = np.random.default_rng(1)
    m, n = 50, 12
    truth = rng.normal(size=(m, n)) * np.arange(1, n + 1) + 3.0
    mean = truth + rng.normal(size=(m, n)) * 0.5 * np.arange(1, n + 1)
    groups = np.repeat(np.arange(4), 3)
    norm = Normalisation.fit(Pairs(mean, np.ones((m, n)), truth), groups)
    for k in range(4):
        cols = groups == k
        t, inc = truth[:, cols], (truth - mean)[:, cols]
        np.testing.assert_allclose(np.asarray(norm.clim_mean)[cols], t.mean(), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(norm.clim_std)[cols], t.std(), rtol=1e-5)
        np.testing.assert_allclose(
            np.asarray(norm.increment_std)[cols], np.sqrt((inc**2).mean()), rtol=1e-5
        )
    spread = np.abs(rng.normal(size=(m, n))) + 0.1
    scaled = Normalisation.fit(Pairs(mean, spread, truth), groups, spread_scaled=True)
    for k in range(4):
        cols = groups == k
        gain = np.sqrt(((truth - mean)[:, cols] ** 2).mean() / (spread[:, cols] ** 2).mean())
        np.testing.assert_allclose(np.asarray(scaled.spread_gain)[cols], gain, rtol=1e-5)
    s = np.asarray(scaled.scale(jnp.asarray(spread[0])))
    np.testing.assert_allclose(
        s,
        np.sqrt(
            (np.asarray(scaled.spread_gain) * spread[0]) ** 2
            + (0.05 * np.asarray(scaled.increment_std)) ** 2
        ),
        rtol=1e-5,
    )
    debiased = Normalisation.fit(Pairs(mean, spread, truth), groups, debias=True)
    for k in range(4):
        cols = groups == k
        np.testing.assert_allclose(
            np.asarray(debiased.increment_bias)[cols], (truth - mean)[:, cols].mean(), rtol=1e-5
        )
    from ensda.training.increment import training_arrays

    z = np.asarray(training_arrays(Pairs(mean, spread, truth), debiased)[2])
    np.testing.assert_allclose(
        z,
        (truth - np.asarray(debiased.increment_bias) - mean) / np.asarray(debiased.increment_std),
        rtol=1e-4,
        atol=1e-5,
    )
    assert Normalisation.from_dict(scaled.to_dict()).spread_gain is not None
    assert Normalisation.from_dict(norm.to_dict()).spread_gain is None
    with pytest.raises(ValueError, match="groups must have shape"):
        Normalisation.fit(Pairs(mean, mean, truth), groups[:5])


def test_anomaly_perturbations_have_the_stated_size():
    """Identity forecast, iid states of std σ: mean error e·σ·√(1 + 1/N), member spread e·σ."""
    rng = np.random.default_rng(2)
    sigma, e, members = 3.0, 0.4, 5
    states = jnp.asarray(rng.normal(size=(400, 64)) * sigma, jnp.float32)
    starts = jnp.arange(300)
    pairs = anomaly_perturbed_pairs(lambda x: x, states, starts, jax.random.key(0), members, e, e)
    err = (
        pairs.mean - np.asarray(states)[1:301]
    )  # paired with the *next* state: the identity moved nothing
    err_now = pairs.mean - np.asarray(states)[:300]
    assert np.sqrt((err_now**2).mean()) == pytest.approx(
        e * sigma * np.sqrt(1 + 1 / members), rel=0.05
    )
    assert np.sqrt((pairs.spread**2).mean()) == pytest.approx(e * sigma, rel=0.05)
    assert np.sqrt((err**2).mean()) > 3 * e * sigma  # the target is the next truth
    with pytest.raises(ValueError, match="each needs the next state"):
        anomaly_perturbed_pairs(
            lambda x: x, states, jnp.asarray([399]), jax.random.key(0), members, e, e
        )


def test_sphere_training_learns_and_the_checkpoint_is_for_the_sphere(trained):
    cfg, path, result = trained
    meta = checkpoint.load_checkpoint(path).meta
    assert meta["testbed"] == {
        "kind": "sphere",
        "grid": [32, 16],
        "channels": list(experiment.make_testbed(cfg).testbed.channels.names),
        "cycle_hours": 6,
    }
    assert meta["spec"]["sphere"] == {"n_lon": 32, "n_lat": 16, "refinement": 1}
    assert meta["training"]["store_times"] == [0, 30]
    # F = 0 gives exactly E[z²] = 1 for normalised increments; the trained model is below it
    assert result.val_loss[-1] < 0.85 and result.val_loss[-1] < result.val_loss[0], result.val_loss


def perturbed_background(osse, e: float, members: int) -> jax.Array:
    """The training-like background: the one-cycle forecast of truth[0] + e (d₀ + dⱼ), d
    differences of climatological states / √2."""
    clim = osse.climatology
    rng = np.random.default_rng(members)
    a = rng.integers(0, clim.shape[0], members + 1)
    b = (a + rng.integers(1, clim.shape[0], members + 1)) % clim.shape[0]  # b != a
    d = (clim[a] - clim[b]) / np.sqrt(2.0)
    return osse.forecast_model.cycle_forecast(osse.truth[0] + e * (d[0] + d[1:]))


def test_sphere_analysis_moves_the_observed_elements_towards_the_truth(trained):
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    assim = experiment.build_assimilator(cfg, osse, "diffusion")
    background = perturbed_background(osse, 1.0, 8)
    obs = osse.obs.at(0)
    xa = np.asarray(assim.analyse(background, obs, jax.random.key(0)))
    idx, truth = np.asarray(obs.idx), np.asarray(osse.truth[1])
    scale = np.repeat(np.asarray(osse.channel_std), 512)[idx]
    err_b = np.sqrt((((np.asarray(background.mean(0)) - truth)[idx] / scale) ** 2).mean())
    err_a = np.sqrt((((xa.mean(0) - truth)[idx] / scale) ** 2).mean())
    assert np.isfinite(xa).all() and err_a < 0.9 * err_b, (err_a, err_b)


@pytest.mark.parametrize(
    "network", [{"kind": "stations"}, {"kind": "swaths"}], ids=["stations", "swaths"]
)
def test_sphere_analysis_with_stations_and_swaths_moves_towards_their_observations(
    trained, network
):
    """The model trained on random columns assimilates a fixed station set and moving
    satellite swaths (other observed columns each cycle): the analysis mean is closer to
    the observations than the background mean, in σ_c units at the observed elements."""
    cfg, _, _ = trained
    cfg = validate(cfg.model_dump() | {"obs": cfg.obs.model_dump() | network})
    osse = experiment.make_osse(cfg)
    assim = experiment.build_assimilator(cfg, osse, "diffusion")
    background = perturbed_background(osse, 1.0, 8)
    for k in (0, 1):
        obs = osse.obs.at(k)
        xa = np.asarray(assim.analyse(background, obs, jax.random.key(k)))
        idx, y = np.asarray(obs.idx), np.asarray(obs.y)
        scale = np.repeat(np.asarray(osse.channel_std), 512)[idx]
        d_b = np.sqrt((((np.asarray(background.mean(0))[idx] - y) / scale) ** 2).mean())
        d_a = np.sqrt((((xa.mean(0)[idx] - y) / scale) ** 2).mean())
        assert idx.size > 0 and np.isfinite(xa).all() and d_a < 0.9 * d_b, (network, k, d_a, d_b)
    if network["kind"] == "swaths":
        assert not np.array_equal(np.asarray(osse.obs.at(0).site), np.asarray(osse.obs.at(1).site))


def test_cycled_sphere_diffusion_stays_finite_and_reports_its_metrics(trained):
    cfg, _, _ = trained
    run = experiment.run_method(cfg, experiment.make_osse(cfg), "diffusion")
    assert np.isfinite(np.asarray(run.result.final_ensemble)).all()
    assert run.summary["nfe"] == 11 and run.n_members == 6  # Heun, 6 steps: 2·6 − 1 calls
    assert all(np.isfinite(run.summary[k]) for k in ("rmse_a", "crps_a", "ssr_a", "spread_a"))


def untrained_checkpoint(cfg, trained_path, out, gain=None):
    """A checkpoint of the untrained network (F = 0) with the trained one's normalisation
    (and spread gain ``gain``)."""
    from ensda.diffusion.model import build_network
    from ensda.training.increment import model_spec

    ck = checkpoint.load_checkpoint(trained_path)
    norm = type(ck.norm)(ck.norm.clim_mean, ck.norm.clim_std, ck.norm.increment_std, gain)
    spec = model_spec(cfg)
    checkpoint.save_checkpoint(
        out,
        nnx_params(build_network(spec, spec.graph(), 0)),
        spec,
        norm,
        ck.meta["testbed"],
        {},
        {},
    )
    return norm


def test_untrained_spread_scaled_model_draws_members_of_the_scaled_spread(trained, tmp_path):
    """F = 0 is the exact denoiser of z ~ N(0, I) (σ_data = 1): the members are x̄_b + s z with
    s = √((g σ_b)² + (f s_clim)²), so the analysis spread is s per element."""
    from ensda.diffusion.data import SPREAD_FLOOR

    cfg, path, _ = trained
    gain = np.linspace(0.8, 2.0, 3 * 512).astype(np.float32)
    norm = untrained_checkpoint(cfg, path, tmp_path / "untrained", gain)
    osse = experiment.make_osse(cfg)
    settings = cfg.method_settings("diffusion") | {
        "checkpoint": str(tmp_path / "untrained"),
        "steps": 40,
    }
    assim = experiment.build_assimilator(cfg, osse, "diffusion", settings)
    background = perturbed_background(osse, 0.5, 32)
    xa = np.asarray(assim.analyse(background, osse.obs.at(0), jax.random.key(1)))
    sigma_b = np.asarray(background.std(0, ddof=1))
    s = np.sqrt((gain * sigma_b) ** 2 + (SPREAD_FLOOR * np.asarray(norm.increment_std)) ** 2)
    ratio = xa.std(0, ddof=1) / s
    assert ratio.mean() == pytest.approx(1.0, abs=0.05), ratio.mean()
    np.testing.assert_allclose(
        xa.mean(0), np.asarray(background.mean(0)), atol=float(4 * (s / np.sqrt(32)).max())
    )


def test_background_coupling_transports_the_background_members(trained, tmp_path):
    """Members started from their standardised background deviations: with F = 0 the sampler
    is linear, so the analysis mean is the background mean (Σ ε_j = 0) and every member's
    deviation is its background deviation times s/σ_b times one sampler constant."""
    cfg, path, _ = trained
    norm = untrained_checkpoint(cfg, path, tmp_path / "untrained")
    osse = experiment.make_osse(cfg)
    settings = cfg.method_settings("diffusion") | {
        "checkpoint": str(tmp_path / "untrained"),
        "coupling": "background",
        "steps": 40,
    }
    assim = experiment.build_assimilator(cfg, osse, "diffusion", settings)
    background = np.asarray(perturbed_background(osse, 0.5, 6))
    xa = np.asarray(assim.analyse(jnp.asarray(background), osse.obs.at(0), jax.random.key(1)))
    mean_b, sigma_b = background.mean(0), background.std(0, ddof=1)
    scale = np.abs(mean_b).max()
    np.testing.assert_allclose(xa.mean(0), mean_b, atol=1e-5 * scale)
    expected = (
        (background - mean_b) / sigma_b * np.asarray(norm.increment_std)
    )  # times the sampler constant
    k = (xa - xa.mean(0)).ravel() @ expected.ravel() / (expected.ravel() @ expected.ravel())
    np.testing.assert_allclose(xa - xa.mean(0), k * expected, atol=1e-4 * scale)
    assert 0.95 < k < 1.05, (
        k
    )  # the sampler maps N(0, σ_max²) to N(0, k²): k = 1.007 for Heun, 40 steps
    with pytest.raises(ValueError, match="coupling: background needs the ODE sampler"):
        experiment.build_assimilator(cfg, osse, "diffusion", settings | {"repaint_jumps": 1})


def nnx_params(model):
    from flax import nnx

    return nnx.split(model)[1]


def test_repaint_hard_mask_puts_the_observations_in_every_member(trained):
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    settings = cfg.method_settings("diffusion") | {
        "obs_channels": False,
        "repaint_jumps": 1,
        "mask_width": 0.0,
    }
    assim = experiment.build_assimilator(cfg, osse, "diffusion", settings)
    background = osse.climatology[:6]
    obs = osse.obs.at(0)
    xa = np.asarray(assim.analyse(background, obs, jax.random.key(0)))
    np.testing.assert_allclose(
        xa[:, np.asarray(obs.idx)],
        np.broadcast_to(np.asarray(obs.y), (6, obs.y.size)),
        rtol=1e-4,
        atol=1e-3 * float(np.abs(np.asarray(obs.y)).max()),
    )


def test_repaint_known_takes_the_nearest_observed_column_in_the_channel(trained):
    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    settings = cfg.method_settings("diffusion") | {"repaint_jumps": 1, "mask_width": 800.0}
    assim = experiment.build_assimilator(cfg, osse, "diffusion", settings)
    obs = osse.obs.at(0)
    keep = np.asarray(obs.idx) < 2 * 512  # drop the last channel's observations: its mask must be 0
    obs = type(obs)(
        obs.y[keep], obs.idx[keep], obs.r_std[keep], obs.operator, obs.site[keep], obs.state_shape
    )
    mean = osse.climatology.mean(0)
    s = np.asarray(assim.norm.increment_std) * (1.0 + np.arange(3 * 512) / 3000.0)  # any scale
    known, mask = (np.asarray(a) for a in assim.repaint_known(mean, jnp.asarray(s), obs))
    grid = osse.testbed.testbed.grid
    lat, lon = np.deg2rad(np.repeat(grid.latitudes, 32)), np.deg2rad(np.tile(grid.longitudes, 16))
    idx, y = np.asarray(obs.idx), np.asarray(obs.y)
    for c, g in [(0, 0), (0, 300), (1, 77), (1, 511)]:
        mine = idx // 512 == c
        cols = idx[mine] % 512
        cosd = np.sin(lat[g]) * np.sin(lat[cols]) + np.cos(lat[g]) * np.cos(lat[cols]) * np.cos(
            lon[g] - lon[cols]
        )
        d = 6371.0 * np.arccos(np.clip(cosd, -1, 1))
        j = np.argmin(d)
        e = c * 512 + g
        assert known[e] == pytest.approx(
            (y[mine][j] - float(mean[idx[mine][j]])) / s[idx[mine][j]], rel=1e-4, abs=1e-5
        )
        assert mask[e] == pytest.approx(np.exp(-(d[j] ** 2) / (2 * 800.0**2)), abs=2e-3)
    assert (mask[2 * 512 :] == 0).all()


def great_circle_to_observed(grid, obs, n_columns: int) -> np.ndarray:
    """NumPy distance (km) of every element (channel-major) to the nearest observed column in
    its channel (inf where the channel is unobserved)."""
    n_lat, n_lon = len(grid.latitudes), len(grid.longitudes)
    lat, lon = (
        np.deg2rad(np.repeat(grid.latitudes, n_lon)),
        np.deg2rad(np.tile(grid.longitudes, n_lat)),
    )
    idx = np.asarray(obs.idx)
    out = np.full(idx.max() // n_columns * n_columns + n_columns, np.inf)
    for c in np.unique(idx // n_columns):
        cols = idx[idx // n_columns == c] % n_columns
        cosd = np.sin(lat)[:, None] * np.sin(lat[cols])[None] + np.cos(lat)[:, None] * np.cos(
            lat[cols]
        )[None] * np.cos(lon[:, None] - lon[cols][None])
        out[c * n_columns : (c + 1) * n_columns] = 6371.0 * np.arccos(np.clip(cosd, -1, 1)).min(
            axis=1
        )
    return out


def test_increment_localisation_keeps_the_background_beyond_twice_the_radius(trained):
    """x_a,j = x_b,j + ρ (x̃_j − x_b,j), ρ = GC(d / c): the forecast member where d ≥ 2c, the
    unlocalised member at the observed columns, the Gaspari–Cohn blend in between."""
    from baselines.localization import gaspari_cohn

    cfg, _, _ = trained
    osse = experiment.make_osse(cfg)
    radius = 700.0
    plain = experiment.build_assimilator(cfg, osse, "diffusion")
    local = experiment.build_assimilator(
        cfg, osse, "diffusion", cfg.method_settings("diffusion") | {"localisation": radius}
    )
    background = perturbed_background(osse, 0.5, 6)
    obs = osse.obs.at(0)
    xa = np.asarray(plain.analyse(background, obs, jax.random.key(4)))
    xl = np.asarray(local.analyse(background, obs, jax.random.key(4)))
    xb = np.asarray(background)
    d = great_circle_to_observed(osse.testbed.testbed.grid, obs, 512)[: xb.shape[1]]
    far, at_obs = d >= 2 * radius, d < 1.0
    assert far.sum() > 100 and at_obs.sum() == np.asarray(obs.idx).size, (far.sum(), at_obs.sum())
    np.testing.assert_array_equal(xl[:, far], xb[:, far])
    scale = np.abs(xb).max()
    np.testing.assert_allclose(xl[:, at_obs], xa[:, at_obs], atol=1e-5 * scale)
    rho = np.asarray(gaspari_cohn(jnp.asarray(d, jnp.float32), radius))
    assert ((rho > 0.05) & (rho < 0.95)).sum() > 100  # the blend is exercised
    np.testing.assert_allclose(xl, xb + rho * (xa - xb), atol=1e-5 * scale)


def test_cycled_source_on_the_sphere_gives_the_cyclers_backgrounds(sw_store, tmp_path):  # noqa: F811
    """A cycled LETKF source runs over the training truths (store times from
    ``train.store_times[0]``) with its own seeds; its pairs are the backgrounds of the same
    run through ``run_method`` (the cycler), after the spin-up skip, and the next truths."""
    from ensda.training.increment import make_pairs

    source = {
        "obs": {"kind": "random", "density": 0.1},
        "method": "letkf",
        "settings": {"radius": 1500.0, "inflation": 1.05},
        "cycles": 12,
    }
    train_cfg = TINY_TRAIN | {"perturbed_samples": 0, "sources": [source], "store_times": [2, 30]}
    cfg = validate(sphere_config(sw_store, tmp_path / "ck", train=train_cfg))
    pairs = make_pairs(cfg)
    seed = cfg.train.seed + 10
    same = validate(
        sphere_config(
            sw_store,
            tmp_path / "ck",
            method="letkf",
            cycles=12,
            burn_in=0,
            obs=source["obs"],
            methods={"letkf": source["settings"]},
            ensemble={"size": cfg.train.members, "init": "climatology"},
            seeds={"truth": seed, "obs": seed + 1, "ensemble": seed + 2, "assimilator": seed + 3},
        )
        | {"testbed": cfg.testbed.model_dump() | {"truth_start": 2}}
    )
    osse = experiment.make_osse(same)
    run = experiment.run_method(same, osse, "letkf")
    skip = 1  # min(100, 12 // 10)
    assert len(pairs) == 12 - skip
    np.testing.assert_allclose(pairs.truth, np.asarray(osse.truth[1 + skip :]), rtol=1e-6)
    scale = float(np.abs(pairs.mean).max())
    np.testing.assert_allclose(pairs.mean, np.asarray(run.result.mean_f[skip:]), atol=1e-4 * scale)
    with pytest.raises(ValueError, match=r"train.sources\[0\].cycles is 40; the training truths"):
        make_pairs(
            validate(
                sphere_config(
                    sw_store,
                    tmp_path / "ck",
                    train=train_cfg | {"sources": [source | {"cycles": 40}]},
                )
            )
        )


def test_sphere_checkpoint_is_refused_for_another_grid_or_r(trained, sw_store):  # noqa: F811
    cfg, path, _ = trained
    other = validate(
        sphere_config(
            sw_store, path, obs={"kind": "random", "density": 0.1, "r_std": {"geopotential": 50.0}}
        )
    )
    with pytest.raises(ValueError, match="trained with r_std"):
        experiment.build_assimilator(other, experiment.make_osse(other), "diffusion")
    data = sphere_config(sw_store, path)
    data["testbed"] = data["testbed"] | {"grid": {"n_lon": 16, "n_lat": 8}}
    bad = validate(data)
    with pytest.raises(ValueError, match="another testbed"):
        experiment.build_assimilator(bad, experiment.make_osse(bad), "diffusion")


def test_sphere_train_config_errors_name_the_field(sw_store, tmp_path):  # noqa: F811
    with pytest.raises(
        ConfigError, match=r"train.sources\[0\].obs: on the sphere a source needs a column network"
    ):
        validate(
            sphere_config(
                sw_store,
                tmp_path,
                train=TINY_TRAIN
                | {"sources": [{"obs": {"every": 2}, "method": "etkf", "cycles": 100}]},
            )
        )
    with pytest.raises(ConfigError, match="variable_weights"):
        validate(
            sphere_config(
                sw_store, tmp_path, train=TINY_TRAIN | {"variable_weights": {"temperature": 2.0}}
            )
        )


def test_sphere_lead_time_rmse_is_that_of_the_standardised_state(sw_store):  # noqa: F811
    """Truth + 0.1 σ_c noise per element: the reference curve starts at 0.1 (standardised)."""
    data = sw_experiment(
        sw_store,
        cycles=8,
        burn_in=2,
        lead_time={"enabled": True, "lead_h": 6.0, "max_lead_h": 12.0, "noise_std": 0.1},
    )
    cfg = validate(data)
    osse = experiment.make_osse(cfg)
    curve = np.asarray(osse.lead_time.curve)
    assert curve[0] == pytest.approx(0.1, rel=0.05) and curve[2] > curve[0], curve
    run = experiment.run_method(cfg, osse, "letkf")
    assert np.isfinite(run.summary["lead_time_rmse"]) and run.summary["lead_time_rmse"] > 0


def test_sweep_density_by_guidance_and_report_on_the_sphere(
    trained,
    sw_store,  # noqa: F811  (the fixture imported above)
    tmp_path,
    monkeypatch,
):
    """`ensda sweep` over observed-column density × guidance strength with the sphere denoiser,
    then `ensda report`: every trial completes, the denser network scores the lower CRPS at
    each strength, and the report draws the density × strength heat map and the maps."""
    import optuna
    import yaml
    from typer.testing import CliRunner

    from ensda.cli import app

    cfg, path, _ = trained
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = sphere_config(
        sw_store,
        path,
        cycles=4,
        burn_in=1,
        tracking={"enabled": True, "uri": uri, "experiment": "sphere-diffusion-sweep"},
        sweep={
            "objective": "crps_a",
            "sampler": "grid",
            "params": {"obs.density": [0.02, 0.3], "assimilator.guidance_strength": [0.0, 1.0]},
        },
    )
    data.pop("train")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(data))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(config), "--storage", storage])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="sw", storage=storage).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    crps = {
        (t.params["obs.density"], t.params["assimilator.guidance_strength"]): t.value
        for t in trials
    }
    for strength in (0.0, 1.0):
        assert crps[(0.3, strength)] < crps[(0.02, strength)], crps
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["report", "study:sw", "--storage", storage, "--uri", uri, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "crps_heatmap.png").stat().st_size > 1000 and (
        out / "report.html"
    ).stat().st_size > 1000
    assert list((out / "maps").glob("diffusion_*.png")), sorted(p.name for p in out.rglob("*.png"))


def test_growth_diagnostic_recomputes_the_cyclers_errors_by_band(trained, capsys):
    """``sphere_diffusion_check.py growth``: its global background and analysis errors,
    recomputed from the kept analyses and the forecast model, equal the cycler's own
    per-cycle rmse_f and rmse_a; the bands partition the elements, so their cos φ weighted
    mean squares add up to the global one."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "sphere_diffusion_check.py"
    spec = importlib.util.spec_from_file_location("sphere_diffusion_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    cfg, _, _ = trained
    table = check.growth(cfg)
    osse = experiment.make_osse(cfg)
    result = experiment.run_method(cfg, osse, "diffusion").result
    assert (
        table["ea"].shape == (cfg.cycles, len(check.BAND_NAMES))
        and len(table["channel"]) == cfg.cycles
    )
    np.testing.assert_allclose(table["ef"][:, -1], np.sqrt(np.asarray(result.mse_f)), rtol=2e-3)
    np.testing.assert_allclose(table["ea"][:, -1], np.sqrt(np.asarray(result.mse_a)), rtol=2e-3)
    assert (table["inc"][:, -1] > 0).all()
    tb = osse.testbed.testbed
    counts = np.array([m.sum() for m in check.band_masks(tb, osse.obs.at(0))])
    assert counts.sum() == osse.truth.shape[-1] and counts[0] > 0
    filled = counts > 0  # Σ_b rms_b² · count_b = n · rms²: the bands partition the elements
    np.testing.assert_allclose(
        (table["ea"][0, :-1][filled] ** 2 * counts[filled]).sum() / counts.sum(),
        table["ea"][0, -1] ** 2,
        rtol=1e-4,
    )
    assert "cycle" in capsys.readouterr().out
