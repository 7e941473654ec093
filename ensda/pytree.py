"""Frozen dataclasses that are JAX pytrees.

Fields marked ``static()`` are settings (hashable, part of the compiled program);
every other field is array data (traced). An assimilator built this way can be passed
straight into a jitted function: its arrays are traced, its settings specialise the
compiled code.
"""

from __future__ import annotations

import dataclasses

import jax


def static(default=dataclasses.MISSING, setting: bool = True):
    """A dataclass field that is compile-time (hashable), not array data.

    ``setting=True``: a user-facing setting (validated from configs); ``False``: derived
    structure such as the testbed grid, filled in by the method's ``build``.
    """
    return dataclasses.field(default=default, metadata={"static": True, "setting": setting})


def pytree_dataclass(cls):
    """Make ``cls`` a frozen dataclass registered as a JAX pytree."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
