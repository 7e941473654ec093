"""One ens-diffusion analysis from the backgrounds of a cycled LETKF: does the learnt residual
improve the anchor, and is its spread calibrated?

The tuned LETKF of the config (``methods.letkf``) is cycled over the config's truth; from
its analyses at ``--cases`` cycles after the burn-in, one-cycle forecasts are the
backgrounds. Each is analysed by ens-diffusion (``methods.ens-diffusion``); printed: the
RMSE of the background mean, of the anchor's analysis mean and of ens-diffusion's, the
spreads, and the std of the true standardised residual z = (t − x̄_a)/s_a against the std
of the model's z (1: calibrated).

    python experiments/ens_diffusion_check.py experiments/configs/l96_ens_diffusion.yaml [--set k=v
    ...]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from ensda import experiment
from ensda.config import load
from ensda.cycle import run_cycles
from ensda.experiment import initial_ensemble


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    cfg = load(args.config, ["tracking.enabled=false", "lead_time.enabled=false", *args.sets])
    osse = experiment.make_osse(cfg)
    letkf = experiment.build_assimilator(cfg, osse, "letkf")
    method = experiment.build_assimilator(cfg, osse, "ens-diffusion")
    n = cfg.members_for("letkf")
    res = run_cycles(
        osse.forecast_model,
        letkf,
        osse.truth,
        osse.obs,
        initial_ensemble(cfg, osse, n),
        jax.random.key(cfg.seeds.assimilator),
        keep_analyses=True,
    )
    ks = jnp.linspace(cfg.burn_in, cfg.cycles - 2, args.cases).astype(
        jnp.int32
    )  # analysis k → background k + 1
    backgrounds = jax.vmap(osse.forecast_model.cycle_forecast)(res.analyses[ks])
    truth, obs = osse.truth[ks + 2], jax.tree.map(lambda a: a[ks + 1], osse.obs)

    def one(background, y, k):
        members, summary = method.analyse_with_summary(
            background, y, jax.random.fold_in(jax.random.key(0), k)
        )
        return members, summary.mean_a, method.norm.scale(summary.spread_a), summary.spread_a

    members, mean_a, scale, spread_a = jax.jit(jax.vmap(one))(backgrounds, obs, ks)
    rmse = lambda m: float(jnp.sqrt(jnp.mean((m - truth) ** 2)))  # noqa: E731
    print(f"{args.cases} analyses of cycled-LETKF backgrounds ({args.config})")
    print(
        f"  RMSE of the mean: background {rmse(backgrounds.mean(1)):.4f}, anchor "
        f"{rmse(mean_a):.4f}, "
        f"ens-diffusion {rmse(members.mean(1)):.4f}"
    )
    print(
        f"  spread: anchor {float(spread_a.mean()):.4f}, ens-diffusion "
        f"{float(members.std(1, ddof=1).mean()):.4f}"
    )
    z_true = (truth - mean_a) / scale
    z_model = (members - mean_a[:, None]) / scale[:, None]
    print(f"  std of z: truth {float(z_true.std()):.4f}, model {float(z_model.std()):.4f}")


if __name__ == "__main__":
    main()
