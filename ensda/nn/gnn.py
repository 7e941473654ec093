r"""GraphCast-style encode-process-decode graph network (Flax NNX).

.. math::
    v^0 = \mathrm{MLP}_{enc}([x, f^V]),\quad e^0 = \mathrm{MLP}_{enc}(f^E);\qquad
    (e^{k+1}, v^{k+1}) = \mathrm{IN}_k(e^k, v^k),\ k = 0..\text{steps}-1;\qquad
    y = \mathrm{MLP}_{dec}(v^{\text{steps}})

(Battaglia et al. 2018; Lam et al. 2023, GraphCast). The interaction networks
:math:`\mathrm{IN}_k` have unshared weights. With ``conditional=True`` every LayerNorm is
a :class:`~ensda.nn.layers.ConditionalLayerNorm` driven by
:math:`c = \mathrm{MLP}_c(\mathrm{Fourier}(c_{noise}))`, computed once per call, where
:math:`c_{noise} = \log(\sigma)/4` is the EDM noise input (Karras et al. 2022; GenCast,
Price et al. 2024).

The decoder's last Linear starts at zero, so the network outputs 0 at initialisation:
an EDM denoiser :math:`D = c_{skip} x + c_{out} F` then starts as the skip connection.

The graph is an argument of the call, not part of the module: the module only knows the
graph's feature sizes, so one set of weights serves any graph with the same features
(e.g. rings of any size), and graphs travel through ``jit`` as ordinary arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ensda.nn.graph import Graph
from ensda.nn.layers import MLP, FourierEmbedding, InteractionNetwork, concat_broadcast


def _check_int(name: str, value, minimum: int) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not (is_int and value >= minimum):
        raise ValueError(f"GNNConfig.{name} must be an int >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class GNNConfig:
    """Size of the graph network.

    ``latent``: width of node and edge latents (and of hidden layers and of the
    conditioning vector); ``steps``: message-passing steps (0 = node-wise MLPs only);
    ``hidden_layers``: hidden layers per MLP (0 = a single Linear); ``n_frequencies``:
    Fourier frequencies of the noise-level embedding.
    """

    latent: int = 64
    steps: int = 4
    hidden_layers: int = 1
    n_frequencies: int = 16

    def __post_init__(self):
        _check_int("latent", self.latent, 1)
        _check_int("steps", self.steps, 0)
        _check_int("hidden_layers", self.hidden_layers, 0)
        _check_int("n_frequencies", self.n_frequencies, 1)


def check_noise_level(
    network: str, conditional: bool, nodes: jax.Array, noise_level: jax.Array | None
) -> None:
    """A conditional network needs ``noise_level`` broadcasting to the batch shape of
    ``nodes (..., V, F)``; an unconditional one takes none. Errors name ``network``."""
    if conditional and noise_level is None:
        raise ValueError(
            f"{network}: conditional network needs noise_level (c_noise = log(sigma)/4)"
        )
    if not conditional and noise_level is not None:
        raise ValueError(
            f"{network}: unconditional network (conditional=False), noise_level must be None"
        )
    if noise_level is not None:
        batch = nodes.shape[:-2]
        shape = jnp.shape(noise_level)
        try:
            ok = jnp.broadcast_shapes(shape, batch) == batch
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{network}: noise_level shape {shape} must broadcast to the batch shape {batch} "
                "of nodes"
            )


class GraphNetwork(nnx.Module):
    """Encode-process-decode GNN mapping node fields ``(..., V, in)`` to ``(..., V, out)``.

    ``graph`` at construction gives only the feature sizes (Fe, Fn); the graph arrays
    are passed at each call. With ``conditional=True`` the call needs ``noise_level``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        graph: Graph,
        config: GNNConfig,
        *,
        conditional: bool = True,
        rngs: nnx.Rngs,
    ):
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"GraphNetwork: in/out features must be >= 1, got {in_features}, {out_features}"
            )
        n_edge_features = graph.edge_features.shape[-1]
        if n_edge_features < 1:
            raise ValueError("GraphNetwork: the graph needs at least one edge feature")
        self.in_features = in_features
        self.out_features = out_features
        self.n_edge_features = n_edge_features
        self.n_node_features = graph.node_features.shape[-1]
        self.config = config
        self.conditional = conditional
        latent, hl = config.latent, config.hidden_layers
        cond_features = latent if conditional else None
        if conditional:
            self.fourier = FourierEmbedding(config.n_frequencies)
            self.cond_mlp = MLP(
                self.fourier.out_features,
                latent,
                latent,
                hidden_layers=hl,
                layer_norm=False,
                rngs=rngs,
            )
        kw = {"hidden_layers": hl, "cond_features": cond_features, "rngs": rngs}
        self.node_encoder = MLP(in_features + self.n_node_features, latent, latent, **kw)
        self.edge_encoder = MLP(n_edge_features, latent, latent, **kw)
        self.processor = nnx.List([InteractionNetwork(latent, **kw) for _ in range(config.steps)])
        self.decoder = MLP(
            latent, latent, out_features, hidden_layers=hl, layer_norm=False, rngs=rngs
        )
        last = self.decoder.layers[-1]
        last.kernel[...] = jnp.zeros_like(last.kernel[...])
        last.bias[...] = jnp.zeros_like(last.bias[...])

    def _check(self, graph: Graph, nodes: jax.Array, noise_level: jax.Array | None) -> None:
        if (
            nodes.ndim < 2
            or nodes.shape[-2] != graph.n_nodes
            or nodes.shape[-1] != self.in_features
        ):
            raise ValueError(
                f"GraphNetwork: nodes must have shape (..., {graph.n_nodes}, {self.in_features}) "
                f"(V = graph.n_nodes, in_features), got {nodes.shape}"
            )
        if (
            graph.edge_features.shape[-1] != self.n_edge_features
            or graph.node_features.shape[-1] != self.n_node_features
        ):
            raise ValueError(
                f"GraphNetwork: built for {self.n_edge_features} edge / {self.n_node_features} "
                "node features, "
                f"the graph has {graph.edge_features.shape[-1]} / {graph.node_features.shape[-1]}"
            )
        check_noise_level("GraphNetwork", self.conditional, nodes, noise_level)

    def __call__(
        self, graph: Graph, nodes: jax.Array, noise_level: jax.Array | None = None
    ) -> jax.Array:
        """Apply the network: ``nodes (..., V, in)``, ``noise_level (...)`` -> ``(..., V, out)``."""
        self._check(graph, nodes, noise_level)
        nodes = jnp.asarray(nodes, jnp.float32)
        cond = None
        if self.conditional:
            # (..., C) -> (..., 1, C): broadcasts over the node / edge axis.
            cond = self.cond_mlp(self.fourier(noise_level))[..., None, :]
        v = self.node_encoder(concat_broadcast(nodes, graph.node_features), cond)
        e = self.edge_encoder(graph.edge_features, cond)
        for block in self.processor:
            e, v = block(graph.senders, graph.receivers, e, v, v, cond)
        return self.decoder(v)
