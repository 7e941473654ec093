"""Parameter checkpoints: a directory with ``params.npz`` (a parameter pytree keyed by its
pytree paths) and ``meta.json`` (what the parameters need: format version, spec, ...).

Both files are written to temporary names and renamed, so a killed writer never leaves a
half-written file, and ``meta.json`` (renamed last) holds the SHA-256 of ``params.npz``
(``params_sha256``), checked on read: a writer killed between the two renames leaves new
parameters beside the old meta, which is refused instead of loaded. Used by the diffusion
checkpoints (``ensda.diffusion.checkpoint``) and the sphere emulator
(``ensda.testbeds.sphere.emulator``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or made for another testbed or network."""


def write_checkpoint(path: Path, params, meta: dict) -> None:
    """Write the parameter pytree ``params`` (``params.npz``, keyed by pytree path) and
    ``meta`` (``meta.json``, with the parameters' checksum) into ``path``: temp files, then
    rename, the meta last."""
    path.mkdir(parents=True, exist_ok=True)
    flat = {
        jax.tree_util.keystr(p): np.asarray(leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    tmp_params, tmp_meta = path / "params.tmp.npz", path / "meta.json.tmp"
    np.savez(tmp_params, **flat)
    meta = meta | {"params_sha256": _sha256(tmp_params)}
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
    digest = meta.get("params_sha256")
    if digest is not None and digest != _sha256(path / "params.npz"):
        raise CheckpointError(
            f"{path}: params.npz does not match meta.json (a write was interrupted, or the files "
            "come from different checkpoints); write it again (e.g. retrain)"
        )
    if fmt is not None and meta.get("format") != fmt:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format')!r}, this ensda reads format {fmt}"
        )
    return meta


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
