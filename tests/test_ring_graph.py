"""The multi-scale ring graph: offsets, edge count, degrees, periodicity, features."""

import jax
import numpy as np
import pytest

from ensda.nn import Graph, ring_graph, ring_offsets


def test_offsets_reference_cases():
    assert ring_offsets(40) == (-16, -8, -4, -2, -1, 1, 2, 4, 8, 16)
    # n/2 = 4 is a power of two: +4 and -4 are the same site, kept once as +4.
    assert ring_offsets(8) == (-2, -1, 1, 2, 4)
    assert ring_offsets(6) == (-2, -1, 1, 2)
    assert ring_offsets(3) == (-1, 1)
    assert ring_offsets(2) == (1,)
    with pytest.raises(ValueError, match="n >= 2"):
        ring_offsets(1)


@pytest.mark.parametrize("n", [2, 3, 5, 6, 8, 16, 40, 64, 100])
def test_offsets_distinct_sorted_symmetric(n):
    offs = ring_offsets(n)
    assert list(offs) == sorted(offs)
    assert len({o % n for o in offs}) == len(offs)  # distinct modulo n
    assert 0 not in {o % n for o in offs}
    assert all(-n / 2 < o <= n / 2 for o in offs)
    # closed under negation modulo n (the ring has no preferred direction)
    assert {(-o) % n for o in offs} == {o % n for o in offs}
    # powers of two up to n // 2, nothing else
    assert {abs(o) for o in offs} == {2**k for k in range(8) if 2**k <= n // 2}


@pytest.mark.parametrize("n", [6, 8, 40])
def test_ring_graph_structure(n):
    g = ring_graph(n)
    offs = ring_offsets(n)
    k = len(offs)
    assert isinstance(g, Graph)
    assert g.n_nodes == n and g.n_edges == n * k
    assert g.senders.dtype == np.int32 and g.receivers.dtype == np.int32
    assert g.edge_features.shape == (n * k, 2) and g.edge_features.dtype == np.float32
    assert g.node_features.shape == (n, 0) and g.node_features.dtype == np.float32
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    # every node has in-degree and out-degree k
    np.testing.assert_array_equal(np.bincount(r, minlength=n), np.full(n, k))
    np.testing.assert_array_equal(np.bincount(s, minlength=n), np.full(n, k))
    # no duplicate edges, no self loops
    assert len(set(zip(s.tolist(), r.tolist()))) == n * k
    assert np.all(s != r)
    # periodic: sender = receiver + offset (mod n), the offset read back from the features
    o = np.rint(np.asarray(g.edge_features[:, 0]) * n).astype(int)
    np.testing.assert_array_equal((r + o) % n, s)
    np.testing.assert_array_equal(o, np.tile(offs, n))
    # second feature: |offset| over the longest offset
    np.testing.assert_allclose(
        g.edge_features[:, 1], np.abs(o) / max(abs(x) for x in offs), rtol=1e-6
    )
    assert float(g.edge_features[:, 1].max()) == 1.0


def test_ring_graph_edges_wrap_around():
    g = ring_graph(40)
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    into0 = sorted(s[r == 0].tolist())
    assert into0 == sorted([1, 2, 4, 8, 16, 39, 38, 36, 32, 24])


def test_ring_graph_is_translation_invariant():
    n, shift = 8, 3
    g = ring_graph(n)
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    f = [tuple(x) for x in np.asarray(g.edge_features).tolist()]
    edges = set(zip(s.tolist(), r.tolist(), f))
    shifted = set(zip(((s + shift) % n).tolist(), ((r + shift) % n).tolist(), f))
    assert edges == shifted


def test_graph_is_a_pytree_through_jit():
    g = ring_graph(6)
    assert len(jax.tree.leaves(g)) == 4
    out = jax.jit(lambda g: g.edge_features.sum() + g.n_nodes)(g)
    assert np.isclose(float(out), float(g.edge_features.sum()) + 6)
