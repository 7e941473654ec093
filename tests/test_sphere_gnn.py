"""The grid -> multi-mesh -> grid GNN: shapes and zero start, errors, relabelling of mesh and
grid nodes, locality of the encoder/decoder (reach computed from the graphs with numpy),
noise conditioning, jit + vmap over members, a tiny overfit; and the mean aggregation of
the interaction block it uses in its encoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ensda.nn import (
    GNNConfig,
    Graph,
    InteractionNetwork,
    SphereGraphNetwork,
    mean_incoming,
)
from ensda.nn.grid_mesh import GridMeshGraphs, grid_mesh_graphs
from ensda.testbeds.sphere.grid import LatLonGrid

SMALL = GNNConfig(latent=16, steps=2, hidden_layers=1, n_frequencies=4)


@functools.cache
def graphs(n_lon=16, n_lat=8, refinement=1) -> GridMeshGraphs:
    """Supported tiny pairs: 16x8 with R = 1, 32x16 with R <= 2."""
    g = LatLonGrid(n_lon, n_lat)
    return grid_mesh_graphs(g.latitudes, g.longitudes, refinement)


@functools.cache
def model(conditional=True, steps=SMALL.steps) -> SphereGraphNetwork:
    """2 -> 3 features; the module knows only feature sizes, so it serves every grid/mesh
    pair (shared between tests, never modified: the perturbed copies are new modules)."""
    config = GNNConfig(
        latent=SMALL.latent,
        steps=steps,
        hidden_layers=SMALL.hidden_layers,
        n_frequencies=SMALL.n_frequencies,
    )
    return SphereGraphNetwork(2, 3, graphs(), config, conditional=conditional, rngs=nnx.Rngs(0))


def perturbed(model, seed=1, scale=0.3):
    """A copy with every parameter perturbed (the zero-initialised ones included); numpy
    noise, so no compilation per parameter shape."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda p: jnp.asarray(
            np.asarray(p) + scale * rng.standard_normal(p.shape).astype(np.float32)
        ),
        params,
    )
    return nnx.merge(graphdef, params, rest)


@jax.jit
def _apply(graphdef, state, G, x, s):
    return nnx.merge(graphdef, state)(G, x, s)


def jitted(model):
    """The model as a jitted function of (graphs, nodes, noise_level); graphs are traced."""
    graphdef, state = nnx.split(model)
    return lambda G, x, s=None: _apply(graphdef, state, G, x, s)


@functools.cache
def network(conditional=True, steps=SMALL.steps):
    """The jitted :func:`model` with every weight perturbed (non-zero output)."""
    return jitted(perturbed(model(conditional, steps)))


def randn(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def replace(G: GridMeshGraphs, name: str, **fields) -> GridMeshGraphs:
    g = getattr(G, name)
    kw = {
        k: fields.get(k, getattr(g, k))
        for k in ("senders", "receivers", "edge_features", "node_features")
    }
    return GridMeshGraphs(
        **{
            n: Graph(**kw) if n == name else getattr(G, n)
            for n in ("grid2mesh", "mesh", "mesh2grid")
        }
    )


# ---------------------------------------------------------------- shapes, start, errors


def test_starts_at_zero_shapes_and_perturbed_output():
    G = graphs()
    y = jitted(model())(G, randn(0, (2, 128, 2)), randn(1, (2,)))
    assert y.shape == (2, 128, 3) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y, 0.0)  # zero-initialised last Linear
    yp = network()(G, randn(0, (2, 128, 2)), randn(1, (2,)))
    assert (
        yp.shape == (2, 128, 3)
        and bool(jnp.all(jnp.isfinite(yp)))
        and float(jnp.abs(yp).mean()) > 0.1
    )
    # the same weights on another grid / mesh with the same feature sizes
    y2 = network()(graphs(32, 16, 2), randn(0, (2, 512, 2)), jnp.zeros(2))
    assert y2.shape == (2, 512, 3) and bool(jnp.all(jnp.isfinite(y2)))


def test_call_errors():
    G, m = graphs(), model()
    x = randn(0, (3, 128, 2))
    with pytest.raises(ValueError, match="needs noise_level"):
        m(G, x)
    with pytest.raises(ValueError, match=r"\(\.\.\., 128, 2\)"):
        m(G, x[..., :1], jnp.zeros(3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 128, 2\)"):
        m(G, x[:, :64], jnp.zeros(3))
    with pytest.raises(ValueError, match="broadcast"):
        m(G, x, jnp.zeros(4))
    with pytest.raises(ValueError, match="broadcast"):
        m(G, x, jnp.zeros((2, 3)))
    with pytest.raises(TypeError, match="GridMeshGraphs"):
        m(G.mesh, x, jnp.zeros(3))
    # encoder and decoder of different grids
    mixed = GridMeshGraphs(G.grid2mesh, G.mesh, graphs(32, 16, 1).mesh2grid)
    with pytest.raises(ValueError, match="same grid"):
        m(mixed, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="feature sizes"):
        m(replace(G, "mesh", edge_features=G.mesh.edge_features[:, :2]), x, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"mesh2grid.senders must lie in \[0, 42\)"):
        m(replace(G, "mesh2grid", senders=G.mesh2grid.senders + 42), x, jnp.zeros(3))
    with pytest.raises(ValueError, match="grid2mesh has senders"):
        m(replace(G, "grid2mesh", senders=G.grid2mesh.senders[:-1]), x, jnp.zeros(3))
    with pytest.raises(ValueError, match="must be None"):
        model(conditional=False)(G, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="in/out features"):
        SphereGraphNetwork(0, 1, G, SMALL, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------- the graph is what counts


def _relabel_mesh(G: GridMeshGraphs, perm: np.ndarray, rng) -> GridMeshGraphs:
    """New mesh node j is old node perm[j]; every edge index remapped; edge order shuffled."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))

    def graph(g, s, r, node_features):
        order = rng.permutation(len(s))
        return Graph(
            senders=jnp.asarray(s[order], jnp.int32),
            receivers=jnp.asarray(r[order], jnp.int32),
            edge_features=g.edge_features[order],
            node_features=node_features,
        )

    g2m, mesh, m2g = G.grid2mesh, G.mesh, G.mesh2grid
    return GridMeshGraphs(
        grid2mesh=graph(
            g2m, np.asarray(g2m.senders), inv[np.asarray(g2m.receivers)], g2m.node_features
        ),
        mesh=graph(
            mesh,
            inv[np.asarray(mesh.senders)],
            inv[np.asarray(mesh.receivers)],
            mesh.node_features[perm],
        ),
        mesh2grid=graph(
            m2g, inv[np.asarray(m2g.senders)], np.asarray(m2g.receivers), m2g.node_features
        ),
    )


def test_relabelling_mesh_nodes_leaves_output_unchanged():
    G, f = graphs(32, 16, 2), network()
    x, s = randn(0, (2, 512, 2)), jnp.array([-0.5, 0.7])
    y = f(G, x, s)
    assert float(jnp.abs(y).mean()) > 0.1
    rng = np.random.default_rng(0)
    perm = rng.permutation(G.mesh.n_nodes)
    np.testing.assert_allclose(f(_relabel_mesh(G, perm, rng), x, s), y, atol=2e-5, rtol=2e-5)
    # control: moving the mesh node features without remapping the edges changes the output
    wrong = GridMeshGraphs(
        G.grid2mesh, replace(G, "mesh", node_features=G.mesh.node_features[perm]).mesh, G.mesh2grid
    )
    assert float(jnp.abs(f(wrong, x, s) - y).max()) > 1e-2


def test_relabelling_grid_points_permutes_output():
    G, f = graphs(), network()
    x, s = randn(0, (2, 128, 2)), jnp.array([-0.5, 0.7])
    y = f(G, x, s)
    perm = np.random.default_rng(1).permutation(128)  # new grid point j is old point perm[j]
    inv = np.empty_like(perm)
    inv[perm] = np.arange(128)
    g2m, m2g = G.grid2mesh, G.mesh2grid
    Gp = GridMeshGraphs(
        grid2mesh=Graph(
            jnp.asarray(inv[np.asarray(g2m.senders)]),
            g2m.receivers,
            g2m.edge_features,
            g2m.node_features[perm],
        ),
        mesh=G.mesh,
        mesh2grid=Graph(
            m2g.senders,
            jnp.asarray(inv[np.asarray(m2g.receivers)]),
            m2g.edge_features,
            m2g.node_features[perm],
        ),
    )
    np.testing.assert_allclose(f(Gp, x[:, perm], s), y[:, perm], atol=2e-5, rtol=2e-5)


def _reach(G: GridMeshGraphs, k: int, steps: int) -> np.ndarray:
    """Grid points whose output can depend on the input at grid point k (numpy, from the edges)."""
    s, r = np.asarray(G.grid2mesh.senders), np.asarray(G.grid2mesh.receivers)
    mesh_nodes = set(r[s == k].tolist())  # the encoder sends grid point k to these
    ms, mr = np.asarray(G.mesh.senders), np.asarray(G.mesh.receivers)
    for _ in range(steps):  # each processor step reaches one mesh edge further
        mesh_nodes |= set(mr[np.isin(ms, list(mesh_nodes))].tolist())
    faces = np.asarray(G.mesh2grid.senders)[
        np.argsort(np.asarray(G.mesh2grid.receivers), kind="stable")
    ].reshape(-1, 3)
    reach = np.isin(faces, list(mesh_nodes)).any(axis=1)
    reach[k] = True  # the grid point's own latent goes straight to its output (residuals)
    return reach


@pytest.mark.parametrize("steps", [0, 1])
def test_locality_of_encoder_and_decoder(steps):
    G, f = graphs(), network(conditional=False, steps=steps)
    x = randn(0, (2, 128, 2))
    y = f(G, x)
    for b, k in enumerate((0, 67)):  # a point of the southernmost row and one near the equator
        reach = _reach(G, k, steps)
        assert 1 < reach.sum() < 128
        dy = np.abs(np.asarray(f(G, x.at[b, k].add(1.0)) - y)).max(axis=-1)
        assert np.all(dy[1 - b] == 0.0)  # the other batch member is untouched
        dy = dy[b]
        # outside the reach bit for bit unchanged; inside, every point changes
        assert np.all(dy[~reach] == 0.0), np.nonzero(dy[~reach])
        assert np.all(dy[reach] > 0.0) and np.median(dy[reach]) > 1e-6, dy[reach]


# ---------------------------------------------------------------- conditioning, batching


def test_noise_conditioning():
    G, m, f = graphs(), model(), network()
    x = randn(0, (128, 2))
    y = f(G, jnp.stack([x, x]), jnp.array([-1.0, 0.5]))
    assert float(jnp.abs(y[0] - y[1]).mean()) > 1e-2
    # every LayerNorm is conditional: the processor's and the encoder's modulations exist
    assert (
        m.processor[0].node_mlp.conditional
        and m.encoder.edge_mlp.conditional
        and m.grid_embedding.conditional
    )
    assert m.output.norm is None


def test_jit_vmap_over_members_equals_batched_call():
    G, m = graphs(), perturbed(model())
    graphdef, state = nnx.split(m)
    x, s = randn(0, (2, 128, 2)), randn(1, (2,))

    @jax.jit
    def members(state, G, x, s):
        return jax.vmap(lambda xi, si: nnx.merge(graphdef, state)(G, xi, si), in_axes=(0, 0))(x, s)

    y = members(state, G, x, s)
    batched = jitted(m)(G, x, s)
    assert float(jnp.abs(y).mean()) > 0.1
    np.testing.assert_allclose(y, batched, atol=2e-5, rtol=2e-5)
    # two leading axes with a noise level broadcast over the first
    x2 = jnp.stack([x, x[::-1]])
    y2 = jitted(m)(G, x2, s)
    np.testing.assert_allclose(y2[0], batched, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(y2[1], jitted(m)(G, x[::-1], s), atol=2e-5, rtol=2e-5)


def test_overfits_a_smooth_field():
    """Adam on the 32x16 grid, mesh refinement 2: y = f(lat, lon) from x = sin(lat)."""
    grid = LatLonGrid(32, 16)
    G = graphs(32, 16, 2)
    lat, lon = np.meshgrid(np.deg2rad(grid.latitudes), np.deg2rad(grid.longitudes), indexing="ij")
    x = jnp.asarray(np.sin(lat).reshape(-1, 1), jnp.float32)
    target = jnp.asarray(
        (np.cos(lat) ** 2 * np.cos(2 * lon) + 0.5 * np.sin(lat)).reshape(-1, 1), jnp.float32
    )
    m = SphereGraphNetwork(1, 1, G, SMALL, conditional=False, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(m, nnx.Param)
    tx = optax.adam(3e-3)

    def loss(params, G):
        return jnp.mean((nnx.merge(graphdef, params)(G, x) - target) ** 2)

    @jax.jit
    def train(params, G):
        def step(_, carry):
            params, state = carry
            grads = jax.grad(loss)(params, G)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.lax.fori_loop(0, 300, step, (params, tx.init(params)))[0]

    initial = float(jnp.mean(target**2))  # the network starts at 0
    final = float(jax.jit(loss)(train(params, G), G))
    assert final < initial / 10, (initial, final)


# ---------------------------------------------------------------- the mean aggregation


def test_mean_incoming():
    msg = jnp.arange(2 * 5 * 2, dtype=jnp.float32).reshape(2, 5, 2)
    r = jnp.array([0, 2, 0, 1, 0])
    out = mean_incoming(msg, r, 4)
    expected = np.zeros((2, 4, 2), np.float32)
    count = np.zeros(4)
    for e, v in enumerate(np.asarray(r)):
        expected[:, v] += np.asarray(msg[:, e])
        count[v] += 1
    expected[:, count > 0] /= count[count > 0][:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 3], 0.0)  # no incoming edges


def test_interaction_network_mean_aggregation():
    latent = 16
    total = InteractionNetwork(latent, rngs=nnx.Rngs(0))
    mean = InteractionNetwork(latent, aggregation="mean", rngs=nnx.Rngs(0))  # the same weights
    assert total.aggregation == "sum"
    senders = jnp.array([0, 1, 2, 2, 0], jnp.int32)
    receivers = jnp.array([1, 0, 1, 1, 2], jnp.int32)  # in-degrees 1, 3, 1, 0
    vs, vr, e = randn(0, (2, 3, latent)), randn(1, (2, 4, latent)), randn(2, (5, latent))

    @nnx.jit
    def run(total, mean):
        return total(senders, receivers, e, vs, vr), mean(senders, receivers, e, vs, vr)

    (e_sum, _), (e_mean, v_mean) = run(total, mean)
    np.testing.assert_allclose(e_mean, e_sum, atol=1e-6)  # edge update unchanged
    agg = np.zeros((2, 4, latent), np.float32)
    for k, v in enumerate(np.asarray(receivers)):
        agg[:, v] += np.asarray(e_sum[:, k])
    agg /= np.maximum([1, 3, 1, 0], 1)[:, None]
    node_update = nnx.jit(lambda mlp, z: mlp(z))(
        mean.node_mlp, jnp.concatenate([vr, jnp.asarray(agg)], -1)
    )
    np.testing.assert_allclose(v_mean, np.asarray(vr) + np.asarray(node_update), atol=1e-5)
    with pytest.raises(ValueError, match="aggregation"):
        InteractionNetwork(latent, aggregation="max", rngs=nnx.Rngs(0))
