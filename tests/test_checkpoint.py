"""Parameter checkpoints (``ensda.checkpoint``): round trip, and a torn write refused.

Reference: the parameters written; a writer killed between its two renames (new
``params.npz`` beside the old ``meta.json``), made here by copying the params of a second
checkpoint over the first, must be refused on read, not loaded with the wrong meta.
"""

import shutil

import numpy as np
import pytest

from ensda.checkpoint import CheckpointError, read_meta, read_params, write_checkpoint


def params(seed):
    rng = np.random.default_rng(seed)
    return {"layer": {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4)}}


def test_round_trip_keeps_values_and_meta(tmp_path):
    write_checkpoint(tmp_path, params(0), {"format": 7, "note": "x"})
    meta = read_meta(tmp_path, 7, "missing")
    assert meta["note"] == "x" and len(meta["params_sha256"]) == 64
    got = read_params(tmp_path, params(1))
    np.testing.assert_array_equal(got["layer"]["w"], params(0)["layer"]["w"])
    assert not list(tmp_path.glob("*.tmp*"))  # no temporary file left behind


def test_params_of_another_write_beside_the_meta_are_refused(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_checkpoint(first, params(0), {"format": 1})
    write_checkpoint(second, params(1), {"format": 1})
    shutil.copy(second / "params.npz", first / "params.npz")  # the rename of meta never came
    with pytest.raises(CheckpointError, match="does not match meta.json"):
        read_meta(first, 1, "missing")
    (first / "params.npz").write_bytes((second / "params.npz").read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="does not match meta.json"):
        read_meta(first, 1, "missing")


def test_missing_files_and_another_format_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        read_meta(tmp_path, 1, "no checkpoint here")
    write_checkpoint(tmp_path, params(0), {"format": 2})
    with pytest.raises(CheckpointError, match="format 2, this ensda reads format 1"):
        read_meta(tmp_path, 1, "missing")
