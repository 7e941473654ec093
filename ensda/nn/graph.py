"""Graphs as arrays, separate from the networks that run on them.

A :class:`Graph` is plain data (a pytree of arrays): it can be built once, stored, and
passed into jitted functions as an argument. Builders live beside it: ``ring.py``
(:func:`~ensda.nn.ring.ring_graph`, Lorenz-96), ``mesh.py`` (:func:`~ensda.nn.mesh.mesh_graph`,
the icosahedral multi-mesh) and ``grid_mesh.py`` (:func:`~ensda.nn.grid_mesh.grid2mesh_graph`,
:func:`~ensda.nn.grid_mesh.mesh2grid_graph`, :func:`~ensda.nn.grid_mesh.grid_mesh_graphs`: the
encoder and decoder graphs between a lat-lon grid and the mesh). In a bipartite graph
``senders`` and ``receivers`` index different node sets.
"""

from __future__ import annotations

import jax

from ensda.pytree import pytree_dataclass


@pytree_dataclass
class Graph:
    """A directed graph as arrays; edge e goes ``senders[e] -> receivers[e]``.

    ``edge_features`` are fixed geometric features of each edge (E, Fe);
    ``node_features`` fixed per-node features (V, Fn), Fn may be 0.
    """

    senders: jax.Array  # (E,) int32
    receivers: jax.Array  # (E,) int32
    edge_features: jax.Array  # (E, Fe) float32
    node_features: jax.Array  # (V, Fn) float32

    @property
    def n_nodes(self) -> int:
        """Number of nodes V."""
        return self.node_features.shape[0]

    @property
    def n_edges(self) -> int:
        """Number of edges E."""
        return self.senders.shape[0]
