"""Diffusion-model checkpoints: a directory with the EMA weights and what they need.

``params.npz``: the network parameters keyed by their pytree path; ``meta.json``: format
version, the testbed the model was trained for, the network spec (``ModelSpec``), the
normalisation statistics, the training config and a training summary. Both files are
written to temporary names and renamed, so a killed ``ensda train`` never leaves a
half-written checkpoint. ``write_checkpoint`` / ``read_meta`` / ``read_params`` are the
network-agnostic part, shared with the sphere emulator (``ensda.testbeds.sphere.emulator``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensda.diffusion.data import Normalisation
from ensda.diffusion.model import ModelSpec, build_network

FORMAT = 1
#: testbed fields a checkpoint must match
TESTBED_FIELDS = ("kind", "n", "forcing", "dt", "steps_per_cycle")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or made for another testbed or network."""


def testbed_record(testbed) -> dict:
    """The fields of a testbed (config or object) that a checkpoint is specific to: on the
    sphere (a ``SphereTestbedConfig`` or a ``FlatSphere``) the grid, the channels and the
    cycle length."""
    from ensda.testbeds.sphere.testbed import FlatSphere, channels_of

    if isinstance(testbed, FlatSphere):
        tb = testbed.testbed
        return {"kind": "sphere", "grid": [tb.grid.n_lon, tb.grid.n_lat], "channels": list(tb.channels.names),
                "cycle_hours": tb.hours_per_cycle}
    if getattr(testbed, "kind", None) == "sphere":
        return {"kind": "sphere", "grid": [testbed.grid.n_lon, testbed.grid.n_lat],
                "channels": list(channels_of(testbed).names), "cycle_hours": testbed.cycle_hours}
    get = (lambda k: getattr(testbed, k, "lorenz96" if k == "kind" else None))
    return {k: get(k) for k in TESTBED_FIELDS}


def write_checkpoint(path: Path, params, meta: dict) -> None:
    """Write the parameter pytree ``params`` (``params.npz``, keyed by pytree path) and
    ``meta`` (``meta.json``) into ``path``, atomically: temp files, then rename."""
    path.mkdir(parents=True, exist_ok=True)
    flat = {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    tmp_params, tmp_meta = path / "params.tmp.npz", path / "meta.json.tmp"
    np.savez(tmp_params, **flat)
    tmp_meta.write_text(json.dumps(meta, indent=1))
    tmp_params.replace(path / "params.npz")
    tmp_meta.replace(path / "meta.json")


def read_meta(path: Path, fmt: int, missing: str) -> dict:
    """``meta.json`` of the checkpoint at ``path``, checked to be there (with ``params.npz``;
    else ``CheckpointError(missing)``), valid JSON and of format ``fmt``."""
    if not (path / "meta.json").exists() or not (path / "params.npz").exists():
        raise CheckpointError(missing)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / 'meta.json'} is not valid JSON: {err}") from None
    if meta.get("format") != fmt:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this ensda reads format {fmt}")
    return meta


def read_params(path: Path, template):
    """The parameters of ``params.npz`` in the structure of ``template`` (a pytree of arrays
    or shape structs, e.g. from ``nnx.eval_shape``), each checked for presence and shape."""
    stored = np.load(path / "params.npz")
    leaves = []
    for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = jax.tree_util.keystr(p)
        if name not in stored:
            raise CheckpointError(f"{path}: parameter {name} missing from params.npz (a different network?)")
        if stored[name].shape != leaf.shape:
            raise CheckpointError(f"{path}: parameter {name} has shape {stored[name].shape}, the network expects {leaf.shape}")
        leaves.append(jnp.asarray(stored[name]))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def check_testbed(path: Path, meta: dict, testbed: dict | None) -> None:
    """Refuse a checkpoint whose ``meta`` testbed differs from ``testbed`` (as ``testbed_record``;
    None: no check), naming each differing field."""
    if testbed is None:
        return
    made = meta["testbed"]
    diff = [f"{k}: checkpoint {made.get(k)!r}, run {v!r}" for k, v in testbed.items() if made.get(k) != v]
    if diff:
        raise CheckpointError(f"checkpoint {path} was made for another testbed ({'; '.join(diff)}); retrain with `ensda train`")


def save_checkpoint(path: Path, params, spec: ModelSpec, norm: Normalisation, testbed: dict, config: dict, summary: dict) -> None:
    """Write ``params.npz`` and ``meta.json`` into ``path`` (atomically: temp files, then rename)."""
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
    meta = read_meta(path, FORMAT, (
        f"no diffusion checkpoint at {path} (expected meta.json and params.npz); "
        "train one with `ensda train CONFIG` (the config's train.checkpoint sets where it goes)"
    ))
    if meta.get("model", "increment") != "increment":
        raise CheckpointError(f"{path} holds an {meta['model']!r} (ens-diffusion) model, not a diffusion increment "
                              "model; use it with method ens-diffusion, or train one with train.target: increment")
    check_testbed(path, meta, testbed)
    spec = ModelSpec.from_dict(meta["spec"])
    norm = Normalisation.from_dict(meta["normalisation"])
    abstract = nnx.eval_shape(lambda: build_network(spec, spec.graph()))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    params = read_params(path, params)
    if jax.tree.leaves(rest):
        raise CheckpointError(f"{path}: the network has non-parameter state, which checkpoints do not store")
    return Checkpoint(spec, norm, nnx.merge(graphdef, params, rest), meta)
