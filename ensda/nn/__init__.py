"""Graphs and the GraphCast-style encode-process-decode GNN (Flax NNX).

Graph builders: :mod:`ensda.nn.ring` (multi-scale ring, Lorenz-96), :mod:`ensda.nn.mesh`
(icosahedral multi-mesh, ``mesh_graph``) and :mod:`ensda.nn.grid_mesh` (grid -> mesh
encoder and mesh -> grid decoder graphs for a lat-lon grid, ``grid_mesh_graphs``).
"""

from ensda.nn.gnn import GNNConfig, GraphNetwork
from ensda.nn.graph import Graph
from ensda.nn.layers import (
    MLP,
    ConditionalLayerNorm,
    FourierEmbedding,
    InteractionNetwork,
    fourier_frequencies,
    gather_nodes,
    sum_incoming,
)
from ensda.nn.ring import ring_graph, ring_offsets

__all__ = [
    "MLP",
    "ConditionalLayerNorm",
    "FourierEmbedding",
    "GNNConfig",
    "Graph",
    "GraphNetwork",
    "InteractionNetwork",
    "fourier_frequencies",
    "gather_nodes",
    "ring_graph",
    "ring_offsets",
    "sum_incoming",
]
