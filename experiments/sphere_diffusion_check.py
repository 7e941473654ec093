"""Diagnostics of the sphere diffusion analysis (experiments/README, "Sphere: diffusion DA").

On experiments/configs/sphere_diffusion.yaml (overrides with ``--set``), standardised
cos-latitude weighted RMSE (each channel / its climatological σ_c):

- ``analysis``: one analysis of N = 16 members of a training-like background: the
  emulator's forecast of the truth at the run's first time perturbed by e × (differences of
  climatological states)/√2 for e in ``--scales``; RMSE and spread of background and
  analysis, globally and at the observed elements;
- ``cycles``: a short cycled run (``--cycles``), its per-cycle rmse_f, rmse_a and spreads and
  the worst channels at the last cycle;
- ``sampler``: the std of samples of z ~ N(0, 1) drawn with its exact denoiser
  D(z, σ) = z / (1 + σ²) by each sampler and step count (the discretisation's own widening
  or narrowing of an ensemble; 64 × 2000 samples);
- ``increments``: the mean analysis increment of the first cycle near (< 600 km) and far
  (> 3000 km) from the observed columns, and the channels with the largest global mean;
- ``bands``: the first cycle's analysis by each of ``--methods`` (the run's own first
  background: the forecast of the initial ensemble), its mean's error and its spread by
  distance to the nearest observed column (observed, < 500, 500–1000, 1000–2000,
  > 2000 km) and globally;
- ``denoiser``: on that background, the error of the trained denoiser's estimate
  D(z₀ + σ ε, σ) of the true normalised increment z₀ = (t − x̄_b)/s at the observed and
  the other elements, by σ, and of D(0, σ_max) (the posterior-mean estimate from the
  conditioning alone); next to |z₀| (the error of z = 0, the background mean) and the
  observation error r/s.
- ``growth``: a cycled run (``--cycles``), per cycle and distance band the error of the
  background mean (the forecast of the previous analysis ensemble), of the analysis mean,
  and the rms of the mean increment, with the channel of the largest increment: which
  step, where, makes an error grow (a diverging run is reported up to its last finite
  cycle).

    python experiments/sphere_diffusion_check.py analysis
    python experiments/sphere_diffusion_check.py bands --set obs.density=0.04
    python experiments/sphere_diffusion_check.py cycles --cycles 12 --set
    methods.diffusion.coupling=background
    python experiments/sphere_diffusion_check.py growth --cycles 12 --set
    methods.diffusion.checkpoint=CKPT
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from ensda import experiment
from ensda.config import load
from ensda.cycle import NonFiniteStateError

CONFIG = "experiments/configs/sphere_diffusion.yaml"


def standardised(osse):
    """(error, grid weights, σ per element) helpers of the OSSE."""
    std = np.repeat(np.asarray(osse.channel_std), osse.testbed.testbed.grid.n)
    w = np.asarray(osse.testbed.grid.weights)

    def rms(x, mask=None):
        e = (np.asarray(x) / std) ** 2 * w
        return float(np.sqrt(e[mask].mean() if mask is not None else e.mean()))

    return rms


def analysis(cfg, scales):
    osse = experiment.make_osse(cfg)
    assim = experiment.build_assimilator(cfg, osse, "diffusion")
    rms, clim, t = standardised(osse), osse.climatology, np.asarray(osse.truth[1])
    obs = osse.obs.at(0)
    idx = np.asarray(obs.idx)
    d = (clim[:17] - clim[17:34]) / np.sqrt(2.0)
    for e in scales:
        xb = osse.forecast_model.cycle_forecast(osse.truth[0] + e * (d[0] + d[1:]))
        xa = jax.jit(assim.analyse)(xb, obs, jax.random.key(0))
        mb, ma = np.asarray(xb.mean(0)) - t, np.asarray(xa.mean(0)) - t
        print(
            f"e {e}: rmse background {rms(mb):.3f} analysis {rms(ma):.3f}; at the observed "
            "elements "
            f"{rms(mb, idx):.3f} -> {rms(ma, idx):.3f}; spread {rms(xb.std(0, ddof=1)):.3f} -> "
            f"{rms(xa.std(0, ddof=1)):.3f}"
        )


def cycles(cfg):
    osse = experiment.make_osse(cfg)
    r = experiment.run_method(cfg, osse, "diffusion").result
    for name in ("mse_f", "mse_a", "spread2_f", "spread2_a"):
        print(
            name.replace("mse", "rmse").replace("spread2", "spread"),
            np.sqrt(np.asarray(getattr(r, name))).round(3),
        )
    cm, std = np.asarray(r.channel_mse_a)[-1], np.asarray(osse.channel_std)
    names = osse.testbed.testbed.channels.names
    worst = np.argsort(-(cm / std**2))[:6]
    print(
        "worst channels at the last cycle:",
        [(names[i], round(float(np.sqrt(cm[i]) / std[i]), 2)) for i in worst],
    )


def distance_to_observed(tb, obs) -> np.ndarray:
    """Great-circle distance (km) of every grid column to the nearest observed column."""
    cols = np.unique(np.asarray(obs.site))
    return np.asarray(
        tb.grid.distance(jnp.arange(tb.grid.n)[:, None], jnp.asarray(cols)[None, :])
    ).min(1)


def first_background(cfg, osse) -> jax.Array:
    """The run's first background: the forecast of the initial ensemble."""
    return osse.forecast_model.cycle_forecast(
        experiment.initial_ensemble(cfg, osse, cfg.ensemble.size)
    )


def increments(cfg):
    osse = experiment.make_osse(cfg)
    assim = experiment.build_assimilator(cfg, osse, "diffusion")
    tb, obs = osse.testbed.testbed, osse.obs.at(0)
    dist = distance_to_observed(tb, obs)
    xb = first_background(cfg, osse)
    xa = jax.jit(assim.analyse)(xb, obs, jax.random.key(0))
    inc = (np.asarray(xa.mean(0)) - np.asarray(xb.mean(0))) / np.repeat(
        np.asarray(osse.channel_std), tb.grid.n
    )
    for name, near in (("near", dist < 600), ("far", dist > 3000)):
        m = np.tile(near, tb.channels.n)
        print(
            f"{name}: rms increment {np.sqrt((inc[m] ** 2).mean()):.3f} σ, mean "
            f"{inc[m].mean():.3f} σ"
        )
    by_channel = inc.reshape(tb.channels.n, -1).mean(1)
    top = np.argsort(-np.abs(by_channel))[:6]
    print(
        "channel mean increments (σ_c):",
        [(tb.channels.names[i], round(float(by_channel[i]), 3)) for i in top],
    )


BANDS_KM = ((0.0, 1.0), (1.0, 500.0), (500.0, 1000.0), (1000.0, 2000.0), (2000.0, np.inf))
BAND_NAMES = ("observed", "< 500 km", "500-1000", "1000-2000", "> 2000 km", "global")


def band_columns(tb, obs) -> list[np.ndarray]:
    """Grid-column masks of the BANDS_KM distance bands to ``obs``'s observed columns."""
    dist = distance_to_observed(tb, obs)
    return [(dist >= lo) & (dist < hi) for lo, hi in BANDS_KM]


def band_masks(tb, obs) -> list[np.ndarray]:
    """Element masks (every channel of the columns) of ``band_columns``."""
    return [np.tile(columns, tb.channels.n) for columns in band_columns(tb, obs)]


def bands(cfg, methods):
    osse = experiment.make_osse(cfg)
    tb, obs = osse.testbed.testbed, osse.obs.at(0)
    rms, columns = standardised(osse), band_columns(tb, obs)
    masks = [np.tile(c, tb.channels.n) for c in columns] + [None]
    print(
        f"{len(np.unique(np.asarray(obs.site)))} observed columns; columns per band:",
        [int(c.sum()) for c in columns],
    )
    print(f"{'':12s}" + "".join(f"{n:>11s}" for n in BAND_NAMES) + "     spread")
    t, xb = np.asarray(osse.truth[1]), first_background(cfg, osse)
    ensembles = {"background": xb}
    for method in methods:
        assim = experiment.build_assimilator(cfg, osse, method)
        ensembles[method] = jax.jit(assim.analyse)(xb, obs, jax.random.key(0))
    for name, x in ensembles.items():
        err = np.asarray(x.mean(0)) - t
        print(
            f"{name:12s}"
            + "".join(f"{rms(err, m):11.3f}" for m in masks)
            + f"{rms(x.std(0, ddof=1)):11.3f}"
        )


def growth(cfg) -> dict[str, np.ndarray]:
    """Per cycle k (rows) and band (columns, the last one global): the standardised RMSE of
    the background mean ``ef``, of the analysis mean ``ea`` and the rms mean increment
    ``inc``; printed, and returned (with ``channel``, the largest-increment channel)."""
    osse = experiment.make_osse(cfg)
    tb, rms = osse.testbed.testbed, standardised(osse)
    kept = []
    try:
        experiment.run_method(
            cfg, osse, "diffusion", analyses=lambda first, ens: kept.append(np.asarray(ens))
        )
    except NonFiniteStateError as err:
        print(f"{err} (reported up to the last finite chunk)")
    analyses = (
        np.concatenate(kept)
        if kept
        else np.zeros((0, cfg.members_for("diffusion"), osse.truth.shape[-1]))
    )
    forecast = jax.jit(osse.forecast_model.cycle_forecast)
    xb, std = first_background(cfg, osse), np.repeat(np.asarray(osse.channel_std), tb.grid.n)
    out = {"ef": [], "ea": [], "inc": [], "channel": []}
    print(
        "per band: background error > analysis error / rms increment (standardised); "
        "largest-increment channel"
    )
    print(f"{'cycle':>5s}" + "".join(f"{n:>21s}" for n in BAND_NAMES))
    for k, xa in enumerate(analyses):
        t, masks = np.asarray(osse.truth[k + 1]), band_masks(tb, osse.obs.at(k)) + [None]
        mb, ma = np.asarray(xb).mean(0), xa.mean(0)
        row = [(rms(mb - t, m), rms(ma - t, m), rms(ma - mb, m)) for m in masks]
        by_channel = (((ma - mb) / std) ** 2).reshape(tb.channels.n, -1).mean(1)
        out["channel"].append(tb.channels.names[int(np.argmax(by_channel))])
        for i, name in enumerate(("ef", "ea", "inc")):
            out[name].append([r[i] for r in row])
        print(
            f"{k + 1:5d}"
            + "".join(f"{f:7.3f} >{a:6.3f} /{i:6.3f}" for f, a, i in row)
            + f"  {out['channel'][-1]}"
        )
        xb = forecast(jnp.asarray(xa))
    return {k: np.asarray(v) for k, v in out.items()}


def denoiser(cfg, sigmas):
    osse = experiment.make_osse(cfg)
    assim = experiment.build_assimilator(cfg, osse, "diffusion")
    obs, xb = osse.obs.at(0), first_background(cfg, osse)
    mean, spread = xb.mean(0), xb.std(0, ddof=1)
    s = assim.norm.scale(spread)
    z0 = (osse.truth[1] - mean) / s
    observed = np.zeros(z0.shape, bool)
    observed[np.asarray(obs.idx)] = True
    D = jax.jit(assim.denoiser(mean, spread, obs))

    def line(label, d):
        e = np.asarray(d - z0)
        rms_observed, rms_other = (
            np.sqrt((e[observed] ** 2).mean()),
            np.sqrt((e[~observed] ** 2).mean()),
        )
        return f"{label:>14s}: rms error observed {rms_observed:.3f}, other {rms_other:.3f}"

    r_s = np.asarray(obs.r_std) / np.asarray(s)[np.asarray(obs.idx)]
    print(
        line("z = 0", jnp.zeros_like(z0)),
        f"(|z0|); r/s at the observations: rms {np.sqrt((r_s**2).mean()):.3f}, "
        f"median {np.median(r_s):.3f}",
    )
    for sigma in sigmas:
        print(
            line(
                f"σ = {sigma:g}",
                D(z0 + sigma * jax.random.normal(jax.random.key(1), z0.shape), jnp.float32(sigma)),
            )
        )
    print(
        line(
            f"D(0, {assim.edm.sigma_max:g})",
            D(jnp.zeros_like(z0), jnp.float32(assim.edm.sigma_max)),
        )
    )


def sampler_widths():
    from ensda.diffusion.edm import EDM
    from ensda.diffusion.samplers import SamplerConfig, sample

    edm, keys = EDM(), jax.random.split(jax.random.key(0), 64)
    for kind, steps in (
        ("heun", 6),
        ("heun", 10),
        ("heun", 12),
        ("heun", 20),
        ("heun", 40),
        ("dpm2s", 6),
        ("dpm2s", 10),
        ("dpm2s", 20),
    ):
        draw = lambda k: sample(
            lambda z, s: z / (1 + s**2), k, (2000,), edm, SamplerConfig(kind=kind, steps=steps)
        )[0]
        print(f"{kind} {steps} steps: sample std {float(jax.vmap(draw)(keys).std()):.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "what",
        choices=("analysis", "cycles", "increments", "sampler", "bands", "denoiser", "growth"),
    )
    ap.add_argument("--methods", default="diffusion,letkf", help="bands: comma-separated methods")
    ap.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=[0.1, 0.5, 1.0, 3.0],
        help="denoiser: noise levels",
    )
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE"
    )
    args = ap.parse_args(argv)
    if args.what == "sampler":
        return sampler_widths()
    fixed = [
        f"cycles={max(args.cycles, 2)}",
        "burn_in=1",
        "tracking.enabled=false",
        "lead_time.enabled=false",
    ]
    cfg = load(args.config, [*fixed, *args.overrides])
    {
        "analysis": lambda: analysis(cfg, args.scales),
        "cycles": lambda: cycles(cfg),
        "increments": lambda: increments(cfg),
        "bands": lambda: bands(cfg, args.methods.split(",")),
        "denoiser": lambda: denoiser(cfg, args.sigmas),
        "growth": lambda: growth(cfg),
    }[args.what]()


if __name__ == "__main__":
    main()
