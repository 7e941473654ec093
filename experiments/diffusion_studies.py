"""Studies of the diffusion analysis ensemble on Lorenz-96 (issue 4, item 7), logged to MLflow.

    python experiments/diffusion_studies.py nfe        [--config ...] [--set k=v ...]
    python experiments/diffusion_studies.py members    [...]
    python experiments/diffusion_studies.py modes      [...]

* ``nfe``: CRPS and SSR against network calls per member: Heun with 3, 5, 10, 20, 50 steps
  (5, 9, 19, 39, 99 NFE), DPM-Solver++(2S) with 5, 10, 20 steps, and RePaint
  (DiffDA's conditioning) with 50 steps × 10 jumps (990 NFE) and the 500-step Heun
  reference (999 NFE) that the "≤ 40 NFE within 5 %" target is measured against;
* ``members``: CRPS against ensemble size N (5, 10, 20, 40);
* ``modes``: each conditioning mode on the same truth and observations: observation
  channels, likelihood guidance (λ = 1), both, RePaint.

Every point is one cycled run (``ensda.experiment.run_method``) on the same OSSE, logged as
a child run of one MLflow parent run per study, with a figure; the table is printed and
written as JSON next to the figure under ``outputs/studies/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ensda import assimilator as registry
from ensda import experiment, tracking
from ensda.config import flatten, load

STUDIES = {
    "nfe": [
        {"steps": 3},
        {"steps": 5},
        {"steps": 10},
        {"steps": 20},
        {"steps": 50},
        {"sampler": "dpm2s", "steps": 5},
        {"sampler": "dpm2s", "steps": 10},
        {"sampler": "dpm2s", "steps": 20},
        {"steps": 500},
        {"steps": 50, "repaint_jumps": 10, "obs_channels": False},
    ],
    "members": [{"_members": n} for n in (5, 10, 20, 40)],
    "modes": [
        {"obs_channels": True},
        {"obs_channels": False, "guidance_strength": 1.0},
        {"obs_channels": True, "guidance_strength": 1.0},
        {"obs_channels": False, "repaint_jumps": 1},
        {"obs_channels": False, "repaint_jumps": 10},
    ],
}


def label(point: dict) -> str:
    return ", ".join(f"{k.lstrip('_')}={v}" for k, v in point.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("study", choices=sorted(STUDIES))
    ap.add_argument("--config", default="experiments/configs/l96_diffusion.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", default="outputs/studies")
    ap.add_argument(
        "--max-nfe", type=int, default=None, help="skip points with more network calls per member"
    )
    ap.add_argument(
        "--min-nfe", type=int, default=None, help="skip points with fewer network calls per member"
    )
    args = ap.parse_args(argv)

    cfg = load(args.config, args.sets + ["method=diffusion"])
    osse = experiment.make_osse(cfg)
    base = cfg.method_settings("diffusion")
    rows = []
    with tracking.tracked_run(
        cfg.tracking,
        f"{cfg.name}:study-{args.study}",
        params=flatten(cfg),
        tags={"ensda.study": args.study},
    ) as parent:
        for point in STUDIES[args.study]:
            point_cfg = cfg
            settings = {k: v for k, v in point.items() if not k.startswith("_")}
            assim_nfe = registry.network_calls(
                experiment.build_assimilator(cfg, osse, "diffusion", base | settings)
            )
            if args.max_nfe is not None and assim_nfe > args.max_nfe:
                print(
                    f"skipped {label(point)}: {assim_nfe} NFE > --max-nfe {args.max_nfe}",
                    flush=True,
                )
                continue
            if args.min_nfe is not None and assim_nfe < args.min_nfe:
                print(
                    f"skipped {label(point)}: {assim_nfe} NFE < --min-nfe {args.min_nfe}",
                    flush=True,
                )
                continue
            if "_members" in point:
                point_cfg = cfg.model_copy(
                    update={"ensemble": cfg.ensemble.model_copy(update={"size": point["_members"]})}
                )
            t0 = time.perf_counter()
            run = experiment.run_method(point_cfg, osse, "diffusion", base | settings)
            row = {
                "point": label(point),
                **{
                    k: run.summary[k]
                    for k in ("rmse_a", "crps_a", "ssr_a", "spread_a", "rmse_f", "nfe")
                },
                "n_members": run.n_members,
                "wall_s": time.perf_counter() - t0,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            with tracking.tracked_run(
                cfg.tracking,
                f"{cfg.name}:{label(point)}",
                params=settings | {"n_members": run.n_members},
                parent=parent,
            ) as child:
                tracking.log_method_run(child, run, cfg.burn_in, figures=False)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = merged(out / f"{args.study}.json", rows, STUDIES[args.study])
        fig = figure(args.study, rows)
        fig.savefig(out / f"{args.study}.png", dpi=120)
        parent.log_figure(fig, f"{args.study}.png")
        parent.log_dict({"rows": rows}, f"{args.study}.json")
        (out / f"{args.study}.json").write_text(json.dumps(rows, indent=1))
    return 0


def merged(path: Path, rows: list[dict], points: list[dict]) -> list[dict]:
    """Rows of an earlier run of the same study (``path``) completed by this run's: a point
    run again replaces its old row; rows come in the study's order. So a study can be run in
    parts (``--max-nfe`` / ``--min-nfe``) into one table and figure."""
    new = {r["point"] for r in rows}
    old = (
        [r for r in json.loads(path.read_text()) if r["point"] not in new] if path.exists() else []
    )
    order = {label(p): i for i, p in enumerate(points)}
    return sorted(old + rows, key=lambda r: order.get(r["point"], len(order)))


def figure(study: str, rows: list[dict]):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if study == "nfe":
        for kind, marker in (("heun", "o"), ("dpm2s", "s"), ("repaint", "^")):
            sel = [
                r
                for r in rows
                if (("repaint" in r["point"]) == (kind == "repaint"))
                and (("dpm2s" in r["point"]) == (kind == "dpm2s"))
            ]
            axes[0].plot(
                [r["nfe"] for r in sel], [r["crps_a"] for r in sel], marker=marker, label=kind
            )
            axes[1].plot(
                [r["nfe"] for r in sel], [r["ssr_a"] for r in sel], marker=marker, label=kind
            )
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("network calls per member (NFE)")
    elif study == "members":
        x = [r["n_members"] for r in rows]
        axes[0].plot(x, [r["crps_a"] for r in rows], "o-")
        axes[1].plot(x, [r["ssr_a"] for r in rows], "o-")
        for ax in axes:
            ax.set_xlabel("ensemble size N")
    else:
        names = [r["point"] for r in rows]
        axes[0].barh(names, [r["crps_a"] for r in rows])
        axes[1].barh(names, [r["ssr_a"] for r in rows])
        axes[1].set_yticks([])
    axes[0].set_title("CRPS (analysis)")
    axes[1].set_title("spread-skill ratio")
    if study != "modes":
        axes[1].axhline(1.0, color="k", lw=0.8)
    if study == "nfe":
        axes[0].legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
