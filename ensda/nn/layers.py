r"""Building blocks of the encode-process-decode graph network (Flax NNX).

- :class:`FourierEmbedding`: sin/cos features of a scalar (the noise level).
- :class:`ConditionalLayerNorm`: LayerNorm whose scale and offset are linear in a
  conditioning vector (GenCast, Price et al. 2024; as FiLM, Perez et al. 2018).
- :class:`MLP`: Linear -> swish -> ... -> Linear, then an optional (conditional) LayerNorm.
- :class:`InteractionNetwork`: one message-passing step (Battaglia et al. 2016, 2018) on
  a possibly bipartite graph, with residual edge and node updates as in GraphCast
  (Lam et al. 2023); incoming messages are summed (default) or averaged
  (:func:`sum_incoming`, :func:`mean_incoming`).

Arrays carry any leading batch dimensions: nodes ``(..., V, F)``, edges ``(..., E, F)``,
a conditioning vector ``(..., 1, C)`` (the 1 broadcasts over nodes/edges). Leading
dimensions broadcast against each other, so fixed edge latents ``(E, F)`` mix with batched
node latents ``(B, V, F)`` without copies made by hand.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

#: Lowest and highest Fourier frequency (cycles per unit of the input) of the noise-level
#: embedding. The EDM input c_noise = log(sigma) / 4 spans about [-1.6, 1.1] for
#: sigma in [0.002, 80]: the lowest frequency has period 8, longer than that range (so
#: it is unambiguous), the highest period 1/16 resolves sigma ratios of about exp(1/4).
FOURIER_MIN_FREQUENCY = 1.0 / 8.0
FOURIER_MAX_FREQUENCY = 16.0


def fourier_frequencies(
    n: int,
    min_frequency: float = FOURIER_MIN_FREQUENCY,
    max_frequency: float = FOURIER_MAX_FREQUENCY,
) -> np.ndarray:
    r"""Angular frequencies :math:`\omega_k = 2\pi f_{min} (f_{max}/f_{min})^{k/(n-1)}`, k = 0..n-1.

    Geometric spacing from ``min_frequency`` to ``max_frequency`` (just ``min_frequency``
    when n = 1). float32, shape ``(n,)``.
    """
    if n < 1:
        raise ValueError(f"fourier_frequencies: n must be >= 1, got {n}")
    if not 0 < min_frequency <= max_frequency:
        raise ValueError(
            f"need 0 < min_frequency <= max_frequency, got {min_frequency}, {max_frequency}"
        )
    k = np.arange(n) / max(n - 1, 1)
    return (2 * np.pi * min_frequency * (max_frequency / min_frequency) ** k).astype(np.float32)


class FourierEmbedding(nnx.Module):
    r"""Fixed (not learned) Fourier features of a scalar.

    .. math:: \mathrm{emb}(x) = [\sin(\omega_1 x), \dots, \sin(\omega_K x),
              \cos(\omega_1 x), \dots, \cos(\omega_K x)]

    with :func:`fourier_frequencies`. ``x``: ``(...)`` -> ``(..., 2K)``.
    """

    def __init__(
        self,
        n_frequencies: int,
        *,
        min_frequency: float = FOURIER_MIN_FREQUENCY,
        max_frequency: float = FOURIER_MAX_FREQUENCY,
    ):
        # Kept as a tuple of floats: static, not a parameter.
        self.frequencies = tuple(
            float(w) for w in fourier_frequencies(n_frequencies, min_frequency, max_frequency)
        )

    @property
    def out_features(self) -> int:
        return 2 * len(self.frequencies)

    def __call__(self, x: jax.Array) -> jax.Array:
        w = jnp.asarray(self.frequencies, jnp.float32)
        wx = jnp.asarray(x, jnp.float32)[..., None] * w
        return jnp.concatenate([jnp.sin(wx), jnp.cos(wx)], axis=-1)


def normalize(x: jax.Array, epsilon: float) -> jax.Array:
    r"""LayerNorm without affine: :math:`(x - \mu) / \sqrt{\sigma^2 + \epsilon}` over the last
    axis."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + epsilon)


class ConditionalLayerNorm(nnx.Module):
    r"""LayerNorm modulated by a conditioning vector c (GenCast).

    .. math:: y = \hat x \odot (1 + W_s c + b_s) + (W_o c + b_o),\qquad
              \hat x = \mathrm{normalize}(x)

    :math:`W_s, b_s, W_o, b_o` start at zero, so at initialisation the module is a plain
    LayerNorm (unit scale, zero offset) and the output does not depend on c.
    ``cond`` has shape ``(..., C)`` broadcasting against ``x.shape[:-1]``.
    """

    def __init__(self, features: int, cond_features: int, *, epsilon: float = 1e-5, rngs: nnx.Rngs):
        zeros = nnx.initializers.zeros_init()
        self.epsilon = epsilon
        self.scale = nnx.Linear(
            cond_features, features, kernel_init=zeros, bias_init=zeros, rngs=rngs
        )
        self.offset = nnx.Linear(
            cond_features, features, kernel_init=zeros, bias_init=zeros, rngs=rngs
        )

    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        return normalize(x, self.epsilon) * (1.0 + self.scale(cond)) + self.offset(cond)


class MLP(nnx.Module):
    """Linear -> swish -> ... -> Linear (``hidden_layers`` hidden layers of width ``hidden``),
    then a LayerNorm when ``layer_norm``.

    With ``cond_features`` the LayerNorm is a :class:`ConditionalLayerNorm` and the call
    needs ``cond``; otherwise it is an ordinary LayerNorm with learned scale and offset.
    ``hidden_layers = 0`` is a single Linear.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out_features: int,
        *,
        hidden_layers: int = 1,
        layer_norm: bool = True,
        cond_features: int | None = None,
        rngs: nnx.Rngs,
    ):
        if hidden_layers < 0:
            raise ValueError(f"MLP: hidden_layers must be >= 0, got {hidden_layers}")
        if cond_features is not None and not layer_norm:
            raise ValueError(
                "MLP: cond_features needs layer_norm=True (conditioning enters through the "
                "LayerNorm)"
            )
        widths = [in_features] + [hidden] * hidden_layers + [out_features]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.conditional = cond_features is not None
        if cond_features is not None:
            self.norm = ConditionalLayerNorm(out_features, cond_features, rngs=rngs)
        elif layer_norm:
            self.norm = nnx.LayerNorm(out_features, epsilon=1e-5, rngs=rngs)
        else:
            self.norm = None

    def __call__(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        if self.conditional and cond is None:
            raise ValueError("MLP: this MLP is conditional, pass cond")
        if not self.conditional and cond is not None:
            raise ValueError("MLP: this MLP is not conditional, cond must be None")
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = nnx.swish(x)
            x = layer(x)
        if self.conditional:
            return self.norm(x, cond)
        if self.norm is not None:
            return self.norm(x)
        return x


def concat_broadcast(*xs: jax.Array) -> jax.Array:
    """Concatenate along the last axis after broadcasting all other axes."""
    shape = jnp.broadcast_shapes(*(x.shape[:-1] for x in xs))
    return jnp.concatenate([jnp.broadcast_to(x, shape + x.shape[-1:]) for x in xs], axis=-1)


def gather_nodes(nodes: jax.Array, index: jax.Array) -> jax.Array:
    """``nodes[..., index, :]``: ``(..., V, F)``, ``(E,)`` -> ``(..., E, F)``."""
    return jnp.take(nodes, index, axis=-2)


def sum_incoming(messages: jax.Array, receivers: jax.Array, n_receivers: int) -> jax.Array:
    r"""Sum of the messages arriving at each receiver: :math:`a_v = \sum_{e: r(e) = v} m_e`.

    ``(..., E, F)``, ``(E,)`` -> ``(..., n_receivers, F)``; a receiver with no incoming
    edge gets zeros. Scatter-add over the edge axis, no ``vmap`` over batch dimensions.
    """
    out = jnp.zeros(messages.shape[:-2] + (n_receivers, messages.shape[-1]), messages.dtype)
    return out.at[..., receivers, :].add(messages)


def mean_incoming(messages: jax.Array, receivers: jax.Array, n_receivers: int) -> jax.Array:
    r"""Mean of the messages arriving at each receiver:
    :math:`a_v = \frac{1}{d_v}\sum_{e: r(e) = v} m_e`.

    :math:`d_v` is the in-degree of v; a receiver with no incoming edge gets zeros. Shapes
    as :func:`sum_incoming`.
    """
    degree = jnp.zeros((n_receivers,), messages.dtype).at[receivers].add(1.0)
    return sum_incoming(messages, receivers, n_receivers) / jnp.maximum(degree, 1.0)[:, None]


#: Aggregations of incoming messages known to :class:`InteractionNetwork`.
AGGREGATIONS = {"sum": sum_incoming, "mean": mean_incoming}


class InteractionNetwork(nnx.Module):
    r"""One message-passing step with residual updates, on a possibly bipartite graph.

    Edge e goes from ``senders[e]`` (an index into ``sender_nodes``) to ``receivers[e]``
    (an index into ``receiver_nodes``); the two node sets may be the same array (a mesh)
    or different ones (grid -> mesh, mesh -> grid).

    .. math:: e'_{sr} = e_{sr} + \mathrm{MLP}_e([e_{sr}, v^s_s, v^r_r]),\qquad
              v'^r_r = v^r_r + \mathrm{MLP}_v([v^r_r, \textstyle\sum_{s} e'_{sr}])

    With ``aggregation="mean"`` the sum is divided by the receiver's in-degree (for
    receivers whose in-degree varies for reasons unrelated to the problem, e.g. grid
    points crowding near the poles in a grid -> mesh encoder). Nodes and edges all have
    width ``latent``. Sender nodes are not updated (GraphCast updates them with a separate
    node-wise MLP where needed). Returns ``(e', v'^r)``.
    """

    def __init__(
        self,
        latent: int,
        *,
        hidden_layers: int = 1,
        cond_features: int | None = None,
        aggregation: str = "sum",
        rngs: nnx.Rngs,
    ):
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"InteractionNetwork: aggregation must be one of {sorted(AGGREGATIONS)}, got "
                f"{aggregation!r}"
            )
        self.latent = latent
        self.aggregation = aggregation
        kw = {"hidden_layers": hidden_layers, "cond_features": cond_features, "rngs": rngs}
        self.edge_mlp = MLP(3 * latent, latent, latent, **kw)
        self.node_mlp = MLP(2 * latent, latent, latent, **kw)

    def __call__(
        self,
        senders: jax.Array,
        receivers: jax.Array,
        edges: jax.Array,
        sender_nodes: jax.Array,
        receiver_nodes: jax.Array,
        cond: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        vs = gather_nodes(sender_nodes, senders)
        vr = gather_nodes(receiver_nodes, receivers)
        edges = edges + self.edge_mlp(concat_broadcast(edges, vs, vr), cond)
        incoming = AGGREGATIONS[self.aggregation](edges, receivers, receiver_nodes.shape[-2])
        receiver_nodes = receiver_nodes + self.node_mlp(
            concat_broadcast(receiver_nodes, incoming), cond
        )
        return edges, receiver_nodes
