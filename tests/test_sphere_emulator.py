"""The sphere forecast emulator (``ensda.testbeds.sphere.emulator``, issue 7 item 3a).

On a 32x16 grid with mesh refinement 2 and a tiny network. References: NumPy float64
statistics for the normalisation; persistence *exactly* for the zero-initialised network
(the residual form); the scanned rollout against steps applied one at a time; the
evaluation's RMSE recomputed in NumPy (cos-latitude weights, sqrt of the mean MSE over
start times); a learnable synthetic dynamics — every field moves east by one grid cell per
cycle — where the trained emulator must beat persistence on a field it never saw.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensda.checkpoint import CheckpointError
from ensda.nn import GNNConfig
from ensda.testbeds.sphere.emulator import (
    Emulator,
    EmulatorNorm,
    EmulatorSpec,
    EmulatorTrainConfig,
    channel_weights,
    evaluate,
    load_emulator,
    long_rollout,
    loss_fn,
    save_emulator,
    step,
    summary_table,
    train_emulator,
)
from ensda.testbeds.sphere.grid import LatLonGrid, mesh_graphs
from ensda.testbeds.sphere.testbed import Channels

GRID = LatLonGrid(32, 16)
TINY = GNNConfig(latent=16, steps=1, hidden_layers=1)
SW = Channels(("geopotential", "u_component_of_wind", "v_component_of_wind"), (500,), ())
ONE = Channels(("geopotential",), (500,), ())


def cos_lat() -> np.ndarray:
    return np.cos(np.deg2rad(GRID.latitudes))[:, None] * np.ones(GRID.n_lon)


def random_states(n_times: int, channels: Channels = SW, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.asarray([5e4, 10.0, 3.0][: channels.n])[:, None, None]
    walk = np.cumsum(rng.normal(size=(n_times, channels.n) + GRID.shape), axis=0)
    return (scale * (1.0 + 0.1 * walk)).astype(np.float32)


def perturbed(emu: Emulator, seed: int = 1, scale: float = 0.1) -> Emulator:
    """The emulator with every parameter random (so F is not zero)."""
    leaves, tree = jax.tree.flatten(emu.params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        leaf + scale * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return emu.replace(params=jax.tree.unflatten(tree, new))


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    norm = EmulatorNorm.fit(random_states(6))
    return perturbed(Emulator.init(EmulatorSpec(SW, GRID, refinement=2, gnn=TINY), norm, key=0))


def test_normalisation_statistics_match_numpy():
    states = random_states(7)
    states[:, 2] = 4.0  # a constant channel: σ and s fall back to 1
    norm = EmulatorNorm.fit(states)
    x = states.astype(np.float64)
    np.testing.assert_allclose(norm.mean, x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(norm.std[:2], x[:, :2].std(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(
        norm.diff_std[:2], np.diff(x[:, :2], axis=0).std(axis=(0, 2, 3)), rtol=1e-5
    )
    assert norm.std[2] == 1.0 and norm.diff_std[2] == 1.0
    with pytest.raises(ValueError, match="T >= 2"):
        EmulatorNorm.fit(states[:1])


def test_untrained_emulator_is_persistence_exactly():
    states = random_states(6)
    emu = Emulator.init(
        EmulatorSpec(SW, GRID, refinement=2, gnn=TINY), EmulatorNorm.fit(states), key=3
    )
    x = jnp.asarray(states).reshape(
        (2, 3, 3) + GRID.shape
    )  # 2 x 3 members (shapes as below: one compilation)
    np.testing.assert_array_equal(emu.forecast(x, 3), x)
    np.testing.assert_array_equal(emu.trajectory(x, 3), jnp.stack([x, x, x], axis=2))
    with pytest.raises(ValueError, match="emulator states must be"):
        emu.forecast(x[..., :2, :, :], 1)


def test_rollout_shapes_and_the_scan_equals_repeated_single_steps(emulator):
    x = jnp.asarray(random_states(6, seed=2)).reshape((2, 3, 3) + GRID.shape)  # 2 x 3 members
    traj = emulator.trajectory(x, 3)
    assert traj.shape == (2, 3, 3, 3) + GRID.shape
    # the graphs as an argument: closed over, the network's index checks would see tracers
    jitted = jax.jit(lambda g, s: step(emulator.graphdef, emulator.params, g, emulator.norm, s))

    def one(s):
        return jitted(emulator.graphs, s)

    scale = np.asarray(emulator.norm.diff_std)[
        :, None, None
    ]  # errors in units of the residual's std

    def close(a, b):
        assert np.abs((np.asarray(a) - np.asarray(b)) / scale).max() < 1e-4

    for i in range(2):
        for j in range(3):
            s = x[i, j]
            for lead in range(3):
                s = one(s)
                close(traj[i, j, lead], s)
    assert (
        np.abs((np.asarray(traj[:, :, 0]) - np.asarray(x)) / scale).min() > 0
    )  # the network is not zero
    close(emulator.forecast(x, 3), traj[:, :, -1])


def test_evaluation_rmse_matches_numpy(emulator):
    states = random_states(9, seed=4)
    clim = random_states(5, seed=5).mean(0)
    res = evaluate(emulator, states, leads=(1, 3), climatology=clim, starts=[0, 2, 4, 5], batch=4)
    assert (
        res["lead_hours"] == [6, 18] and res["n_starts"] == 4 and res["channels"] == list(SW.names)
    )
    w = cos_lat()
    starts, lead = np.array([0, 2, 4, 5]), 3
    fc = np.asarray(emulator.forecast(jnp.asarray(states[starts]), lead), np.float64)
    truth = states[starts + lead].astype(np.float64)

    def rmse(pred):
        mse = (w * (pred - truth) ** 2).sum(axis=(-2, -1)) / w.sum()  # (starts, channels)
        return np.sqrt(mse.mean(axis=0))

    expect = {
        "emulator": rmse(fc),
        "persistence": rmse(states[starts].astype(np.float64)),
        "climatology": rmse(clim),
    }
    var = np.asarray(emulator.norm.std, np.float64) ** 2
    for name, value in expect.items():
        np.testing.assert_allclose(res["rmse"][name][1], value, rtol=1e-4)
        np.testing.assert_allclose(
            res["aggregate"][name][1], np.sqrt((value**2 / var).mean()), rtol=1e-4
        )
    table = summary_table(res, channels=["geopotential_500"])
    assert table["lead_hours"] == 18 and set(table["rows"]) == {
        "geopotential_500",
        "aggregate (standardised)",
    }
    json.dumps(res), json.dumps(table)  # JSON-able
    with pytest.raises(ValueError, match="do not fit"):
        evaluate(emulator, states, leads=(1, 3), starts=[6])


def test_loss_weights_by_variable_and_channel():
    lam = channel_weights(SW, [("geopotential", 2.0), ("u_component_of_wind_500", 0.5)])
    np.testing.assert_array_equal(lam, [2.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="neither variables"):
        channel_weights(SW, [("temperature", 1.0)])


def advected(seed: int, n_times: int) -> np.ndarray:
    """A smooth random field (zonal wavenumbers 1-3) moving east one grid cell per cycle."""
    rng = np.random.default_rng(seed)
    lat, lon = np.deg2rad(GRID.latitudes)[:, None], np.deg2rad(GRID.longitudes)[None, :]
    field = sum(
        rng.normal()
        * np.cos(lat) ** k
        * np.cos(k * lon + rng.uniform(0, 2 * np.pi))
        * (1 + 0.5 * rng.normal() * np.sin(lat))
        for k in (1, 2, 3)
    )
    return np.stack([np.roll(field, t, axis=-1)[None] for t in range(n_times)]).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    config = EmulatorTrainConfig(
        steps=150, batch=4, lr=5e-3, warmup=10, log_every=50, refinement=2, gnn=TINY
    )
    return train_emulator(advected(0, 40), ONE, config, jax.random.key(0), progress=False)


def test_training_learns_an_advection_and_beats_persistence_on_an_unseen_field(trained):
    # trained on the first 80 % of the times (32 of 40), validation on the rest
    assert trained.n_train == 32 and list(trained.steps) == [50, 100, 150]
    # the normalised residual's MSE starts at ~1 (F = 0) and falls by > 10x (measured ~20x)
    assert trained.initial_loss > 0.8 and trained.loss[-1] < trained.initial_loss / 10, (
        trained.summary
    )
    assert trained.val_loss[-1] < 0.2
    res = evaluate(trained.emulator, advected(1, 20), leads=(1, 2, 4))  # another random field
    emu, pers = (
        np.asarray(res["aggregate"]["emulator"]),
        np.asarray(res["aggregate"]["persistence"]),
    )
    # measured: emulator 0.27 / 0.47 / 0.72, persistence 0.58 / 1.13 / 2.05
    assert (emu < 0.7 * pers).all(), (emu, pers)


def test_checkpoint_round_trip_gives_identical_forecasts(trained, tmp_path):
    emu = trained.emulator
    save_emulator(
        tmp_path / "emu", emu, {"train_times": [0, trained.n_train - 1], "summary": trained.summary}
    )
    # the graphs are rebuilt while loading, under nnx.eval_shape: they must stay concrete
    mesh_graphs.cache_clear()
    loaded = load_emulator(tmp_path / "emu")
    assert loaded.spec == emu.spec and loaded.meta["training"]["train_times"] == [0, 31]
    for f in ("mean", "std", "diff_std"):
        np.testing.assert_array_equal(getattr(loaded.norm, f), getattr(emu.norm, f))
    x = jnp.asarray(advected(2, 3))
    np.testing.assert_array_equal(loaded.forecast(x, 2), emu.forecast(x, 2))
    with pytest.raises(CheckpointError, match="no emulator checkpoint"):
        load_emulator(tmp_path / "nothing")


def test_config_emulator_is_the_forecast_model_of_the_imperfect_testbed(emulator, tmp_path):
    pytest.importorskip("dinosaur")
    from ensda.testbeds.sphere.config import SphereTestbedConfig
    from ensda.testbeds.sphere.testbed import FlatSphere, from_config

    save_emulator(tmp_path / "emu", emulator)
    base = {
        "kind": "sphere",
        "model": "shallow_water",
        "resolution": "T21",
        "dt_minutes": 30.0,
        "grid": {"n_lon": 32, "n_lat": 16},
    }
    cfg = SphereTestbedConfig.model_validate(
        base | {"forecast": {"emulator": str(tmp_path / "emu")}}
    )
    flat = FlatSphere(from_config(cfg, perfect=False))
    assert from_config(cfg).emulator is None  # the perfect model stays the dycore
    x = jnp.asarray(random_states(2, seed=6))
    np.testing.assert_array_equal(
        flat.cycle_forecast(x.reshape(2, -1)), emulator.forecast(x, 1).reshape(2, -1)
    )
    # inside the cycler's jit (graphs and weights closed over)
    np.testing.assert_allclose(
        jax.jit(flat.cycle_forecast)(x.reshape(2, -1)),
        emulator.forecast(x, 1).reshape(2, -1),
        rtol=1e-6,
    )
    # another grid is refused, and an emulator with a dycore resolution is a config error
    other = SphereTestbedConfig.model_validate(
        base | {"grid": {"n_lon": 64, "n_lat": 32}, "forecast": {"emulator": str(tmp_path / "emu")}}
    )
    with pytest.raises(ValueError, match="made for another state"):
        from_config(other, perfect=False)
    with pytest.raises(ValueError, match="replaces the dycore"):
        SphereTestbedConfig.model_validate(
            base | {"forecast": {"emulator": "x", "resolution": "T21"}}
        )


def test_rollout_loss_is_the_residual_loss_for_one_cycle_and_the_rollout_error_for_two(emulator):
    """K = 1: mean_c λ_c mean(w ((x₁ − x₀)/s − F(x₀))²); K = 2: the mean of that error at
    x̂₁ = step(x₀) and x̂₂ = step(x̂₁) against x₁, x₂ (NumPy from single steps)."""
    from ensda.testbeds.sphere.emulator import residual

    states = random_states(6, seed=4)
    area = np.asarray(GRID.weights, np.float64)
    area = area / area.mean()
    lam = np.asarray([2.0, 1.0, 0.5])
    s = np.asarray(emulator.norm.diff_std, np.float64)[:, None, None]
    jstep = jax.jit(lambda g, x: step(emulator.graphdef, emulator.params, g, emulator.norm, x))
    jres = jax.jit(lambda g, x: residual(emulator.graphdef, emulator.params, g, emulator.norm, x))
    loss = jax.jit(
        lambda g, w: loss_fn(
            emulator.graphdef,
            emulator.params,
            g,
            emulator.norm,
            jnp.asarray(area, jnp.float32),
            jnp.asarray(lam, jnp.float32),
            w,
        )
    )

    def weighted(err):  # err (B, C, lat, lon)
        return float((lam * (area * err**2).mean(axis=(0, 2, 3))).mean())

    pairs = np.stack([states[:3], states[1:4]], axis=1)  # (3, 2, C, lat, lon)
    f = np.stack(
        [np.asarray(jres(emulator.graphs, jnp.asarray(x)), np.float64) for x in states[:3]]
    )
    expected1 = weighted((states[1:4] - states[:3]) / s - f)
    assert float(loss(emulator.graphs, jnp.asarray(pairs))) == pytest.approx(expected1, rel=1e-4)
    windows = np.stack([states[:3], states[1:4], states[2:5]], axis=1)
    x1 = np.stack([np.asarray(jstep(emulator.graphs, jnp.asarray(x))) for x in states[:3]])
    x2 = np.stack([np.asarray(jstep(emulator.graphs, jnp.asarray(x))) for x in x1])
    expected2 = 0.5 * (weighted((x1 - states[1:4]) / s) + weighted((x2 - states[2:5]) / s))
    assert float(loss(emulator.graphs, jnp.asarray(windows))) == pytest.approx(expected2, rel=1e-4)


def test_long_rollout_of_persistence_matches_numpy():
    """The untrained emulator is persistence: the rollout error at day d is that of the start
    state against the truth d days later, its bias and variance those of the start state."""
    states = random_states(30, seed=5)
    emu = Emulator.init(
        EmulatorSpec(SW, GRID, refinement=2, gnn=TINY), EmulatorNorm.fit(states[:20]), key=0
    )
    held, clim = states[10:], states[:10].mean(0)
    res = long_rollout(emu, held, clim, states[:10], days=4.0, n_starts=2)
    assert res["days"] == [1] and res["start_times"] == [
        0,
        3,
    ]  # LONG_DAYS within 4 days; 19 - 16 = 3
    area = np.asarray(GRID.weights, np.float64)
    area = area / area.mean()
    sigma = np.asarray(emu.norm.std, np.float64)
    gm = lambda x: (x * area).mean(axis=(-2, -1))  # noqa: E731
    x0 = held[[0, 3]].astype(np.float64)
    rmse = np.sqrt((gm((x0 - held[[4, 7]]) ** 2) / sigma**2).mean(-1)).mean()
    bias = (np.abs(gm(x0) - gm(clim)) / sigma).mean(-1).mean()
    var = lambda x: gm((x - gm(x)[..., None, None]) ** 2)  # noqa: E731
    ratio = (var(x0) / var(states[:10].astype(np.float64)).mean(0)).mean(-1).mean()
    np.testing.assert_allclose(
        [res["rmse"][0], res["abs_bias"][0], res["variance_ratio"][0]],
        [rmse, bias, ratio],
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="need more than"):
        long_rollout(emu, held, clim, states[:10], days=5.0)


def test_fine_tuning_starts_from_the_trained_emulator_with_a_rollout_loss(trained):
    """``init``: training resumes from the trained weights and normalisation; its first
    two-cycle rollout loss is the trained emulator's (small), a fresh network's is
    persistence's (the mean of the normalised 1- and 2-cycle changes, ~2.5 here)."""
    config = EmulatorTrainConfig(
        steps=20, batch=4, lr=1e-3, warmup=5, log_every=10, refinement=2, gnn=TINY, rollout=2
    )
    fresh = train_emulator(advected(0, 40), ONE, config, jax.random.key(0), progress=False)
    tuned = train_emulator(
        advected(0, 40), ONE, config, jax.random.key(0), progress=False, init=trained.emulator
    )
    assert fresh.initial_loss > 1.5 and tuned.initial_loss < 0.3 * trained.initial_loss, (
        fresh.initial_loss,
        tuned.initial_loss,
    )
    np.testing.assert_array_equal(tuned.emulator.norm.mean, trained.emulator.norm.mean)
    assert tuned.val_loss[-1] < 0.2
    with pytest.raises(ValueError, match="rollout must be >= 1"):
        EmulatorTrainConfig(rollout=0)


def test_train_emulator_command_trains_scores_and_rescores_its_checkpoint(tmp_path):
    """``ensda train-emulator`` on a tiny shallow-water nature run: it writes a checkpoint that
    loads as the config's forecast emulator, and ``--eval-only`` on that checkpoint gives the
    same held-out scores as the run that trained it (the saved network is the trained one)."""
    import yaml
    from test_sphere_cycle import sw_experiment
    from typer.testing import CliRunner

    from ensda.cli import app
    from ensda.config import validate
    from ensda.testbeds.sphere.nature import generate

    store = tmp_path / "nature.zarr"
    generate(validate(sw_experiment(store)).testbed, progress=False)
    out = tmp_path / "emu"
    section = {
        "checkpoint": str(out),
        "steps": 6,
        "batch": 2,
        "latent": 8,
        "message_steps": 1,
        "refinement": 1,
        "log_every": 3,
        "warmup": 2,
        "eval_fraction": 0.3,
        "long_days": 0,
        "max_starts": 3,
    }
    config = tmp_path / "sw.yaml"
    config.write_text(yaml.safe_dump(sw_experiment(store, emulator=section)))
    runner = CliRunner()
    trained = runner.invoke(app, ["train-emulator", str(config), "--json"])
    assert trained.exit_code == 0, trained.output
    first = json.loads(trained.stdout.strip().splitlines()[-1])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["training"]["train_times"] == [0, 27]  # 40 states one cycle apart, 30 % held out
    rescored = runner.invoke(app, ["train-emulator", str(config), "--eval-only", "--json"])
    assert rescored.exit_code == 0, rescored.output
    again = json.loads(rescored.stdout.strip().splitlines()[-1])
    assert again["table_48h"] == first["table_48h"]
    assert first["trained"]["n_params"] > 0 and again["trained"] is None
    emulator = load_emulator(out)  # usable as testbed.forecast.emulator of this config
    cfg = validate(
        sw_experiment(
            store, testbed=sw_experiment(store)["testbed"] | {"forecast": {"emulator": str(out)}}
        )
    )
    emulator.check_matches(SW, LatLonGrid(32, 16), cfg.testbed.cycle_hours, where=str(out))


def test_emulator_section_needs_the_sphere():
    from ensda.config import ConfigError, validate

    with pytest.raises(ConfigError, match="emulator: the forecast emulator is trained on a sphere"):
        validate({"emulator": {"steps": 10}})
