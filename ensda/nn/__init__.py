"""Graphs and the GraphCast-style encode-process-decode GNN (Flax NNX)."""

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
