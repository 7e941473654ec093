"""`ensda compare` over several truth seeds, and the table of the results with their means.

Each seed s runs `ensda compare CONFIG --methods ... --set seeds.truth=s --set seeds.obs=s+1`
(the same truth and observations for every method, one MLflow parent run per seed); the
JSON results are appended to ``--out`` (a JSON-lines file: the script resumes, seeds already
there are skipped) and a Markdown table of crps_a / rmse_a / ssr_a per method and seed,
with the mean over seeds, is printed.

    python experiments/compare_seeds.py experiments/configs/l96_ens_diffusion.yaml \
        --methods ens-diffusion,letkf --seeds 0,10,20 --out outputs/every4.jsonl [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def run(config: str, methods: str, seed: int, sets: list[str]) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "ensda"),
        "compare",
        config,
        "--methods",
        methods,
        "--json",
        "--set",
        f"seeds.truth={seed}",
        "--set",
        f"seeds.obs={seed + 1}",
    ]
    for item in sets:
        cmd += ["--set", item]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(records: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in records})
    methods = list(dict.fromkeys(res["label"] for r in records for res in r["results"]))
    head = "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"
    lines = [head, "|" + "---|" * (len(seeds) + 2)]
    for m in methods:
        cells, values = [], []
        for s in seeds:
            res = [x for r in records if r["seed"] == s for x in r["results"] if x["label"] == m]
            if res and "crps_a" in res[0]:
                x = res[0]
                values.append((x["crps_a"], x["rmse_a"], x["ssr_a"]))
                lost = f" ({100 * x['lost_track_a']:.0f} %)" if "lost_track_a" in x else ""
                ssr = "–" if x.get("n_members") == 1 else f"{x['ssr_a']:.2f}"  # one member
                cells.append(f"{x['crps_a']:.3f} / {x['rmse_a']:.3f} / {ssr}{lost}")
            else:
                cells.append(
                    f"diverged at cycle {res[0]['diverged_at_cycle']}"
                    if res and "diverged_at_cycle" in res[0]
                    else "–"
                )
        mean = " / ".join(f"{v:.3f}" for v in np.mean(values, axis=0)) if values else "–"
        if values and all(
            x.get("n_members") == 1 for r in records for x in r["results"] if x["label"] == m
        ):
            mean = mean.rsplit(" / ", 1)[0] + " / –"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(
        [
            "crps_a / rmse_a / ssr_a (% of cycles lost: analysis error above the climatological "
            "mean's)",
            "",
            *lines,
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--methods", required=True)
    ap.add_argument("--seeds", default="0,10,20")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--label", default="", help="suffix of the method names in the table (an ablation)"
    )
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = (
        [json.loads(line) for line in args.out.read_text().splitlines()]
        if args.out.exists()
        else []
    )
    done = {(r["seed"], r["label"]) for r in records}
    for seed in (int(s) for s in args.seeds.split(",")):
        if (seed, args.label) in done:
            continue
        result = run(args.config, args.methods, seed, args.sets)
        for res in result["results"]:
            res["label"] = res.get("method", "?") + args.label
        record = {"seed": seed, "label": args.label, "sets": args.sets, **result}
        with args.out.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        records.append(record)
        print(f"seed {seed} done (MLflow {result.get('mlflow_run_id')})", file=sys.stderr)
    print(table(records))


if __name__ == "__main__":
    main()
