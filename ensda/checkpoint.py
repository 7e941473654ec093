"""Parameter checkpoints: a directory with ``params.npz`` (a parameter pytree keyed by its
pytree paths) and ``meta.json`` (what the parameters need: format version, spec, ...).

Both files are written to temporary names and renamed, so a killed writer never leaves a
half-written file. Used by the diffusion checkpoints (``ensda.diffusion.checkpoint``) and
the sphere emulator (``ensda.testbeds.sphere.emulator``).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or made for another testbed or network."""


def write_checkpoint(path: Path, params, meta: dict) -> None:
    """Write the parameter pytree ``params`` (``params.npz``, keyed by pytree path) and
    ``meta`` (``meta.json``) into ``path``, atomically: temp files, then rename."""
    path.mkdir(parents=True, exist_ok=True)
    flat = {
        jax.tree_util.keystr(p): np.asarray(leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    tmp_params, tmp_meta = path / "params.tmp.npz", path / "meta.json.tmp"
    np.savez(tmp_params, **flat)
    tmp_meta.write_text(json.dumps(meta, indent=1))
    tmp_params.replace(path / "params.npz")
    tmp_meta.replace(path / "meta.json")


def read_meta(path: Path, fmt: int | None, missing: str) -> dict:
    """``meta.json`` of the checkpoint at ``path``, checked to be there (with ``params.npz``;
    else ``CheckpointError(missing)``), valid JSON and of format ``fmt`` (None: unchecked)."""
    if not (path / "meta.json").exists() or not (path / "params.npz").exists():
        raise CheckpointError(missing)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / 'meta.json'} is not valid JSON: {err}") from None
    if fmt is not None and meta.get("format") != fmt:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format')!r}, this ensda reads format {fmt}"
        )
    return meta


def read_params(path: Path, template):
    """The parameters of ``params.npz`` in the structure of ``template`` (a pytree of arrays
    or shape structs, e.g. from ``nnx.eval_shape``), each checked for presence and shape."""
    stored = np.load(path / "params.npz")
    leaves = []
    for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = jax.tree_util.keystr(p)
        if name not in stored:
            raise CheckpointError(
                f"{path}: parameter {name} missing from params.npz (a different network?)"
            )
        if stored[name].shape != leaf.shape:
            raise CheckpointError(
                f"{path}: parameter {name} has shape {stored[name].shape}, the network expects "
                f"{leaf.shape}"
            )
        leaves.append(jnp.asarray(stored[name]))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
