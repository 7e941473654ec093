"""Graphs and the GraphCast-style encode-process-decode GNNs (Flax NNX).

Graph builders: :mod:`ensda.nn.ring` (multi-scale ring, Lorenz-96), :mod:`ensda.nn.mesh`
(icosahedral multi-mesh, ``mesh_graph``) and :mod:`ensda.nn.grid_mesh` (grid -> mesh
encoder and mesh -> grid decoder graphs for a lat-lon grid, ``grid_mesh_graphs``).

Networks, built from the blocks of :mod:`ensda.nn.layers`: :mod:`ensda.nn.gnn`
(``GraphNetwork``, encode-process-decode on one graph, e.g. the Lorenz-96 ring) and
:mod:`ensda.nn.sphere_gnn` (``SphereGraphNetwork``, lat-lon grid -> icosahedral
multi-mesh -> grid, GraphCast's layout, on the graphs of ``grid_mesh_graphs``).
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
    mean_incoming,
    sum_incoming,
)
from ensda.nn.ring import ring_graph, ring_offsets
from ensda.nn.sphere_gnn import SphereGraphNetwork

__all__ = [
    "MLP",
    "ConditionalLayerNorm",
    "FourierEmbedding",
    "GNNConfig",
    "Graph",
    "GraphNetwork",
    "InteractionNetwork",
    "SphereGraphNetwork",
    "fourier_frequencies",
    "gather_nodes",
    "mean_incoming",
    "ring_graph",
    "ring_offsets",
    "sum_incoming",
]
