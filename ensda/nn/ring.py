r"""The multi-scale periodic ring graph for Lorenz-96.

Node ``i`` receives from the sites ``i + o (mod n)`` for every offset ``o`` of
:func:`ring_offsets`: the neighbours at distance 1, 2, 4, 8, ... on both sides (a 1-D
analogue of GraphCast's multi-mesh, whose coarse levels carry long-range messages). With
``steps`` message-passing steps a node sees sites up to ``steps * max|o|`` away.

Every node has the same incoming offsets and the edge features depend on the offset
only, so a network on this graph is equivariant under cyclic shifts of the sites.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ensda.nn.graph import Graph


def ring_offsets(n: int) -> tuple[int, ...]:
    """Signed offsets ``±1, ±2, ±4, ...`` (powers of two up to ``n // 2``), sorted.

    Offsets are distinct modulo ``n``: each is represented in ``(-n/2, n/2]``, so when
    ``n`` is even and ``n/2`` is a power of two, ``+n/2`` and ``-n/2`` are the same site
    and the offset ``n/2`` appears once. Examples: n = 40 gives ±1, ±2, ±4, ±8, ±16
    (10 offsets; 20 is not a power of two, so it is not an offset); n = 8 gives
    -2, -1, 1, 2, 4; n = 6 gives -2, -1, 1, 2; n = 2 gives (1,).
    """
    if n < 2:
        raise ValueError(f"ring_offsets: need n >= 2 sites, got {n}")
    offsets = set()
    o = 1
    while o <= n // 2:
        for s in (o, -o):
            r = s % n  # canonical representative in (-n/2, n/2]
            offsets.add(r - n if r > n // 2 else r)
        o *= 2
    return tuple(sorted(offsets))


def ring_graph(n: int) -> Graph:
    r"""The periodic ring of ``n`` sites with multi-scale edges ``i + o -> i``.

    Edges are ordered by receiver, then by offset: edge ``i * K + k`` goes from
    ``(i + o_k) mod n`` to ``i`` (K = ``len(ring_offsets(n))``). Edge features
    (Fe = 2), as GraphCast's displacement and length normalised by a fixed scale:

    .. math:: \big(o / n,\ |o| / \max_k |o_k|\big)

    the signed displacement from receiver to sender as a fraction of the ring, and the
    edge length relative to the longest edge (1 for the coarsest scale). Node features
    are empty, shape ``(n, 0)``: every site is alike (translation invariance).
    """
    offsets = np.asarray(ring_offsets(n), np.int64)
    k = offsets.size
    receivers = np.repeat(np.arange(n), k)
    senders = (receivers + np.tile(offsets, n)) % n
    o = np.tile(offsets, n).astype(np.float64)
    edge_features = np.stack([o / n, np.abs(o) / np.abs(offsets).max()], axis=-1)
    return Graph(
        senders=jnp.asarray(senders, jnp.int32),
        receivers=jnp.asarray(receivers, jnp.int32),
        edge_features=jnp.asarray(edge_features, jnp.float32),
        node_features=jnp.zeros((n, 0), jnp.float32),
    )
