"""Diffusion-model checkpoints: a directory with the EMA weights and what they need.

``params.npz``: the network parameters keyed by their pytree path; ``meta.json``: format
version, the testbed the model was trained for, the network spec (``ModelSpec``), the
normalisation statistics, the training config and a training summary. Both files are
written atomically by the network-agnostic ``ensda.checkpoint``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from ensda.checkpoint import CheckpointError, read_meta, read_params, write_checkpoint
from ensda.diffusion.data import Normalisation
from ensda.diffusion.model import ModelSpec, build_network

FORMAT = 1


def testbed_record(testbed) -> dict:
    """The fields of a testbed (its config section or its model) that a checkpoint is specific
    to: each testbed says which (``checkpoint_record``), e.g. n, forcing, dt and steps per cycle
    on Lorenz-96, the grid, the channels and the cycle length on the sphere."""
    return testbed.checkpoint_record()


def check_testbed(path: Path, meta: dict, testbed: dict | None) -> None:
    """Refuse a checkpoint whose ``meta`` testbed differs from ``testbed`` (as ``testbed_record``;
    None: no check), naming each differing field."""
    if testbed is None:
        return
    made = meta["testbed"]
    diff = [
        f"{k}: checkpoint {made.get(k)!r}, run {v!r}"
        for k, v in testbed.items()
        if made.get(k) != v
    ]
    if diff:
        raise CheckpointError(
            f"checkpoint {path} was made for another testbed ({'; '.join(diff)}); retrain with "
            "`ensda train`"
        )


def save_checkpoint(
    path: Path,
    params,
    spec: ModelSpec,
    norm: Normalisation,
    testbed: dict,
    config: dict,
    summary: dict,
) -> None:
    """Write ``params.npz`` and ``meta.json`` into ``path`` (atomically: temp files, then
    rename)."""
    meta = {
        "format": FORMAT,
        "testbed": testbed,
        "spec": spec.to_dict(),
        "normalisation": norm.to_dict(),
        "training": summary,
        "config": config,
    }
    write_checkpoint(path, params, meta)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    spec: ModelSpec
    norm: Normalisation
    model: nnx.Module
    meta: dict


def load_checkpoint(path: str | Path, testbed: dict | None = None) -> Checkpoint:
    """Load a checkpoint; with ``testbed`` (as ``testbed_record``), check it was made for it."""
    path = Path(path)
    meta = read_meta(
        path,
        FORMAT,
        (
            f"no diffusion checkpoint at {path} (expected meta.json and params.npz); "
            "train one with `ensda train CONFIG` (the config's train.checkpoint sets where it goes)"
        ),
    )
    if meta.get("model", "increment") != "increment":
        raise CheckpointError(
            f"{path} holds an {meta['model']!r} (ens-diffusion) model, not a diffusion increment "
            "model; use it with method ens-diffusion, or train one with train.target: increment"
        )
    check_testbed(path, meta, testbed)
    spec = ModelSpec.from_dict(meta["spec"])
    norm = Normalisation.from_dict(meta["normalisation"])
    abstract = nnx.eval_shape(lambda: build_network(spec, spec.graph()))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    params = read_params(path, params)
    if jax.tree.leaves(rest):
        raise CheckpointError(
            f"{path}: the network has non-parameter state, which checkpoints do not store"
        )
    return Checkpoint(spec, norm, nnx.merge(graphdef, params, rest), meta)
