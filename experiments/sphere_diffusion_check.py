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
  (> 3000 km) from the observed columns, and the channels with the largest global mean.

    python experiments/sphere_diffusion_check.py analysis
    python experiments/sphere_diffusion_check.py cycles --cycles 12 --set methods.diffusion.coupling=background
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from ensda import experiment
from ensda.config import load

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
        print(f"e {e}: rmse background {rms(mb):.3f} analysis {rms(ma):.3f}; at the observed elements "
              f"{rms(mb, idx):.3f} -> {rms(ma, idx):.3f}; spread {rms(xb.std(0, ddof=1)):.3f} -> {rms(xa.std(0, ddof=1)):.3f}")


def cycles(cfg):
    osse = experiment.make_osse(cfg)
    r = experiment.run_method(cfg, osse, "diffusion").result
    for name in ("mse_f", "mse_a", "spread2_f", "spread2_a"):
        print(name.replace("mse", "rmse").replace("spread2", "spread"), np.sqrt(np.asarray(getattr(r, name))).round(3))
    cm, std = np.asarray(r.channel_mse_a)[-1], np.asarray(osse.channel_std)
    names = osse.testbed.testbed.channels.names
    worst = np.argsort(-(cm / std**2))[:6]
    print("worst channels at the last cycle:", [(names[i], round(float(np.sqrt(cm[i]) / std[i]), 2)) for i in worst])


def increments(cfg):
    osse = experiment.make_osse(cfg)
    assim = experiment.build_assimilator(cfg, osse, "diffusion")
    tb, obs = osse.testbed.testbed, osse.obs.at(0)
    cols = np.unique(np.asarray(obs.site))
    dist = np.asarray(tb.grid.distance(jnp.arange(tb.grid.n)[:, None], jnp.asarray(cols)[None, :])).min(1)
    xb = osse.forecast_model.cycle_forecast(experiment.initial_ensemble(cfg, osse, cfg.ensemble.size))
    xa = jax.jit(assim.analyse)(xb, obs, jax.random.key(0))
    inc = ((np.asarray(xa.mean(0)) - np.asarray(xb.mean(0))) / np.repeat(np.asarray(osse.channel_std), tb.grid.n))
    for name, near in (("near", dist < 600), ("far", dist > 3000)):
        m = np.tile(near, tb.channels.n)
        print(f"{name}: rms increment {np.sqrt((inc[m] ** 2).mean()):.3f} σ, mean {inc[m].mean():.3f} σ")
    by_channel = inc.reshape(tb.channels.n, -1).mean(1)
    top = np.argsort(-np.abs(by_channel))[:6]
    print("channel mean increments (σ_c):", [(tb.channels.names[i], round(float(by_channel[i]), 3)) for i in top])


def sampler_widths():
    from ensda.diffusion.edm import EDM
    from ensda.diffusion.samplers import SamplerConfig, sample

    edm, keys = EDM(), jax.random.split(jax.random.key(0), 64)
    for kind, steps in (("heun", 6), ("heun", 10), ("heun", 12), ("heun", 20), ("heun", 40),
                        ("dpm2s", 6), ("dpm2s", 10), ("dpm2s", 20)):
        draw = lambda k: sample(lambda z, s: z / (1 + s**2), k, (2000,), edm, SamplerConfig(kind=kind, steps=steps))[0]
        print(f"{kind} {steps} steps: sample std {float(jax.vmap(draw)(keys).std()):.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("analysis", "cycles", "increments", "sampler"))
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    if args.what == "sampler":
        return sampler_widths()
    fixed = [f"cycles={max(args.cycles, 2)}", "burn_in=1", "tracking.enabled=false", "lead_time.enabled=false"]
    cfg = load(args.config, [*fixed, *args.overrides])
    {"analysis": lambda: analysis(cfg, args.scales), "cycles": lambda: cycles(cfg), "increments": lambda: increments(cfg)}[args.what]()


if __name__ == "__main__":
    main()
