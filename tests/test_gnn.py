"""The encode-process-decode GNN and its blocks: shapes, errors, equivariance on the ring,
batching, conditioning, split/merge under jit/vmap/grad, a training smoke test, and the
bipartite interaction block against a hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ensda.nn import (
    MLP,
    ConditionalLayerNorm,
    FourierEmbedding,
    GNNConfig,
    Graph,
    GraphNetwork,
    InteractionNetwork,
    fourier_frequencies,
    ring_graph,
    sum_incoming,
)
from ensda.nn.layers import normalize

SMALL = GNNConfig(latent=16, steps=2, hidden_layers=1, n_frequencies=4)


def make(n=16, fin=2, fout=3, conditional=True, config=SMALL, seed=0):
    g = ring_graph(n)
    return g, GraphNetwork(fin, fout, g, config, conditional=conditional, rngs=nnx.Rngs(seed))


@jax.jit
def _perturb(params, key, scale):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


def perturbed(model, seed=1, scale=0.3):
    """A copy with every parameter perturbed (zero-initialised ones included)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, _perturb(params, jax.random.key(seed), scale), rest)


def perturb_decoder(model, seed=1):
    """Give the zero-initialised output layer random weights (in place)."""
    last = model.decoder.layers[-1]
    k1, k2 = jax.random.split(jax.random.key(seed))
    last.kernel[...] = jax.random.normal(k1, last.kernel[...].shape)
    last.bias[...] = jax.random.normal(k2, last.bias[...].shape)


@jax.jit
def _apply(graphdef, state, graph, nodes, noise_level):
    return nnx.merge(graphdef, state)(graph, nodes, noise_level)


def jitted(model):
    """The model as a jitted function of (graph, nodes, noise_level).

    The parameters are an argument, so models of one structure share compiled code.
    """
    graphdef, state = nnx.split(model)
    return lambda g, x, s=None: _apply(graphdef, state, g, x, s)


def randn(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# ---------------------------------------------------------------- config and errors


@pytest.mark.parametrize(
    "kw",
    [
        {"latent": 0},
        {"steps": -1},
        {"hidden_layers": -1},
        {"n_frequencies": 0},
        {"latent": 8.0},
        {"steps": True},
    ],
)
def test_config_validation(kw):
    with pytest.raises(ValueError, match="GNNConfig"):
        GNNConfig(**kw)


def test_call_errors():
    g, m = make()
    x = randn(0, (3, 16, 2))
    with pytest.raises(ValueError, match="needs noise_level"):
        m(g, x)
    with pytest.raises(ValueError, match=r"\(\.\.\., 16, 2\)"):
        m(g, x[..., :1], jnp.zeros(3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 16, 2\)"):
        m(g, x[:, :8], jnp.zeros(3))
    with pytest.raises(ValueError, match="broadcast"):
        m(g, x, jnp.zeros(4))
    with pytest.raises(ValueError, match="broadcast"):
        m(g, x, jnp.zeros((2, 3)))  # more batch dims than nodes
    gu, mu = make(conditional=False)
    with pytest.raises(ValueError, match="must be None"):
        mu(gu, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="edge"):
        mu(Graph(gu.senders, gu.receivers, gu.edge_features[:, :1], gu.node_features), x)


def test_starts_at_zero_and_shapes():
    g, m = make()
    f = jitted(m)
    y = f(g, randn(0, (2, 16, 2)), randn(1, (2,)))
    assert y.shape == (2, 16, 3) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y, 0.0)  # zero-initialised output layer
    assert f(g, randn(0, (16, 2)), jnp.float32(0.3)).shape == (16, 3)


def test_same_weights_serve_another_ring_size():
    _, m = make(n=16)
    perturb_decoder(m)
    g32 = ring_graph(32)  # same feature sizes, different graph
    y = jitted(m)(g32, randn(0, (2, 32, 2)), jnp.zeros(2))
    assert y.shape == (2, 32, 3) and bool(jnp.all(jnp.isfinite(y)))


# ---------------------------------------------------------------- symmetry and batching


@pytest.mark.parametrize("conditional", [True, False])
def test_translation_equivariance(conditional):
    n, shift = 16, 5  # offsets -4, -2, -1, 1, 2, 4, 8: the n/2 edge wraps both ways
    g, m = make(n=n, conditional=conditional)
    m = jitted(perturbed(m))
    x = randn(0, (2, n, 2))
    s = jnp.array([-0.5, 0.7]) if conditional else None
    y = m(g, x, s)
    y_shift = m(g, jnp.roll(x, shift, axis=-2), s)
    assert float(jnp.abs(y).mean()) > 0.1  # non-trivial output
    np.testing.assert_allclose(y_shift, jnp.roll(y, shift, axis=-2), atol=2e-5, rtol=2e-5)
    # and not trivially shift invariant
    assert float(jnp.abs(y_shift - y).max()) > 1e-2


def test_batch_consistency_and_leading_dims():
    g, m = make()
    m = jitted(perturbed(m))
    x = randn(0, (2, 3, 16, 2))
    s = randn(1, (2, 3))
    y = m(g, x, s)
    assert y.shape == (2, 3, 16, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(y[i, j], m(g, x[i, j], s[i, j]), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        y.reshape(6, 16, 3), m(g, x.reshape(6, 16, 2), s.reshape(6)), atol=1e-5, rtol=1e-5
    )
    # a scalar noise level broadcasts over the batch
    s0 = jnp.float32(0.25)
    np.testing.assert_allclose(m(g, x, s0), m(g, x, jnp.full((2, 3), s0)), atol=1e-5, rtol=1e-5)
    # vmap over samples agrees with the batched call
    yv = jax.vmap(lambda xi, si: m(g, xi, si))(x[0], s[0])
    np.testing.assert_allclose(yv, y[0], atol=1e-5, rtol=1e-5)


def test_unconditional_batch_consistency():
    g, m = make(conditional=False)
    m = jitted(perturbed(m))
    x = randn(0, (5, 16, 2))
    y = m(g, x)
    for i in range(5):
        np.testing.assert_allclose(y[i], m(g, x[i]), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- conditioning


def test_fourier_embedding_formula():
    emb = FourierEmbedding(5)
    w = 2 * np.pi * (1 / 8) * (16 / (1 / 8)) ** (np.arange(5) / 4)
    np.testing.assert_allclose(fourier_frequencies(5), w, rtol=1e-6)
    np.testing.assert_allclose(w[0], 2 * np.pi / 8, rtol=1e-6)
    np.testing.assert_allclose(w[-1], 2 * np.pi * 16, rtol=1e-6)
    x = np.array([[-1.3, 0.0], [0.4, 1.1]], np.float32)
    expected = np.concatenate([np.sin(x[..., None] * w), np.cos(x[..., None] * w)], axis=-1)
    out = emb(jnp.asarray(x))
    assert out.shape == (2, 2, 10) and emb.out_features == 10
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(FourierEmbedding(1).frequencies, [2 * np.pi / 8], rtol=1e-6)
    with pytest.raises(ValueError):
        fourier_frequencies(0)


def test_conditional_layer_norm():
    cln = ConditionalLayerNorm(4, 3, rngs=nnx.Rngs(0))
    x = randn(0, (2, 5, 4)) * 3 + 1
    c = randn(1, (2, 1, 3))
    # zero-initialised: a plain LayerNorm, independent of c
    xhat = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(cln(x, c), xhat, atol=1e-5)
    np.testing.assert_allclose(normalize(x, 1e-5), xhat, atol=1e-5)
    ws, bs, wo, bo = randn(2, (3, 4)), randn(3, (4,)), randn(4, (3, 4)), randn(5, (4,))
    cln.scale.kernel[...], cln.scale.bias[...] = ws, bs
    cln.offset.kernel[...], cln.offset.bias[...] = wo, bo
    np.testing.assert_allclose(cln(x, c), xhat * (1 + c @ ws + bs) + (c @ wo + bo), atol=1e-4)


def test_noise_conditioning():
    g, m = make()
    perturb_decoder(m)
    x = randn(0, (16, 2))
    f = jitted(m)
    # zero-initialised CLN scale/offset: the network is a plain-LayerNorm network and
    # ignores the noise level
    np.testing.assert_allclose(f(g, x, jnp.float32(-1.0)), f(g, x, jnp.float32(1.0)), atol=1e-6)
    # once the CLN parameters move, the noise level changes the output
    f = jitted(perturbed(m))
    y1, y2 = f(g, x, jnp.float32(-1.0)), f(g, x, jnp.float32(1.0))
    assert float(jnp.abs(y1 - y2).mean()) > 1e-2


def test_mlp_variants():
    x = randn(0, (3, 5))
    m0 = MLP(5, 8, 2, hidden_layers=0, layer_norm=False, rngs=nnx.Rngs(0))
    assert len(m0.layers) == 1
    np.testing.assert_allclose(
        m0(x), x @ m0.layers[0].kernel[...] + m0.layers[0].bias[...], atol=1e-5
    )
    m2 = MLP(5, 8, 4, hidden_layers=2, rngs=nnx.Rngs(0))
    y = m2(x)
    assert len(m2.layers) == 3 and y.shape == (3, 4)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)  # LayerNorm at init
    mc = MLP(5, 8, 4, cond_features=6, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pass cond"):
        mc(x)
    with pytest.raises(ValueError, match="cond must be None"):
        m2(x, jnp.zeros((3, 6)))
    with pytest.raises(ValueError, match="layer_norm"):
        MLP(5, 8, 4, layer_norm=False, cond_features=6, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------- bipartite block


def test_sum_incoming():
    m = jnp.arange(2 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 2)  # batch 2, 4 edges
    r = jnp.array([0, 2, 0, 1])
    out = sum_incoming(m, r, 4)
    expected = np.zeros((2, 4, 2), np.float32)
    for e, v in enumerate(np.asarray(r)):
        expected[:, v] += np.asarray(m[:, e])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[:, 3], 0.0)  # no incoming edges


def test_interaction_network_bipartite():
    latent = 4
    block = InteractionNetwork(latent, hidden_layers=1, rngs=nnx.Rngs(0))
    # 3 sender nodes -> 5 receiver nodes; receivers 3 and 4 get no edges
    senders = jnp.array([0, 1, 2, 2, 0], jnp.int32)
    receivers = jnp.array([1, 0, 1, 2, 2], jnp.int32)
    vs, vr = randn(0, (2, 3, latent)), randn(1, (2, 5, latent))
    e = randn(2, (5, latent))  # edge latents shared over the batch (broadcast)
    e2, vr2 = block(senders, receivers, e, vs, vr)
    assert e2.shape == (2, 5, latent) and vr2.shape == (2, 5, latent)
    # hand computation with loops instead of gather/scatter (the block's own MLPs, applied once)
    s_np, r_np = np.asarray(senders), np.asarray(receivers)
    e_np, vs_np, vr_np = np.asarray(e), np.asarray(vs), np.asarray(vr)
    edge_in = np.zeros((2, 5, 3 * latent), np.float32)
    for b in range(2):
        for k in range(5):
            edge_in[b, k] = np.concatenate([e_np[k], vs_np[b, s_np[k]], vr_np[b, r_np[k]]])
    e_expected = e_np + np.asarray(block.edge_mlp(jnp.asarray(edge_in)))
    np.testing.assert_allclose(e2, e_expected, atol=1e-5)
    agg = np.zeros((2, 5, latent), np.float32)
    for k in range(5):
        agg[:, r_np[k]] += e_expected[:, k]
    assert np.all(
        agg[:, 3:] == 0
    )  # receivers 3 and 4 get nothing: updated from their state and a zero sum
    v_expected = vr_np + np.asarray(block.node_mlp(jnp.asarray(np.concatenate([vr_np, agg], -1))))
    np.testing.assert_allclose(vr2, v_expected, atol=1e-5)


def test_interaction_network_conditional():
    block = InteractionNetwork(4, cond_features=3, rngs=nnx.Rngs(0))
    senders = jnp.array([0, 1], jnp.int32)
    receivers = jnp.array([1, 0], jnp.int32)
    v = randn(0, (2, 2, 4))
    e2, v2 = block(senders, receivers, randn(1, (2, 4)), v, v, randn(2, (2, 1, 3)))
    assert e2.shape == (2, 2, 4) and v2.shape == (2, 2, 4)
    with pytest.raises(ValueError, match="pass cond"):
        block(senders, receivers, randn(1, (2, 4)), v, v)


# ---------------------------------------------------------------- functional use, training


def test_split_merge_jit_vmap_grad():
    g, m = make()
    m = perturbed(m)
    graphdef, state = nnx.split(m)
    x, s = randn(0, (3, 16, 2)), randn(1, (3,))

    @jax.jit
    def apply(state, graph, x, s):
        return jax.vmap(lambda xi, si: nnx.merge(graphdef, state)(graph, xi, si))(x, s)

    y = apply(state, g, x, s)
    assert float(jnp.abs(y).mean()) > 0.1
    for i in range(3):  # against the module itself, called eagerly on one sample
        np.testing.assert_allclose(y[i], m(g, x[i], s[i]), atol=1e-5, rtol=1e-5)

    @jax.jit
    def loss(state, x, s):
        return jnp.mean(nnx.merge(graphdef, state)(g, x, s) ** 2)

    grads, gx = jax.grad(loss, argnums=(0, 1))(state, x, s)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert float(jnp.abs(grads["decoder"]["layers"][1]["kernel"][...]).max()) > 0
    # the CLN parameters receive gradient too (the noise level is a real input)
    cln = grads["processor"][0]["node_mlp"]["norm"]["scale"]["kernel"][...]
    assert float(jnp.abs(cln).max()) > 0
    # gradient with respect to the input (as the guidance term will need)
    assert gx.shape == x.shape and float(jnp.abs(gx).max()) > 0


def test_training_reduces_loss():
    """AdamW under nnx.jit learns y = roll(x, 1) - x on a 16-ring."""
    g = ring_graph(16)
    m = GraphNetwork(
        1, 1, g, GNNConfig(latent=32, steps=2, n_frequencies=4), conditional=True, rngs=nnx.Rngs(0)
    )
    opt = nnx.Optimizer(m, optax.adamw(5e-3), wrt=nnx.Param)

    def target(x):
        return jnp.roll(x, 1, axis=-2) - x

    @nnx.jit
    def step(m, opt, x, s):
        def loss_fn(m):
            return jnp.mean((m(g, x, s) - target(x)) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    @nnx.jit
    def evaluate(m, x, s):
        return jnp.mean((m(g, x, s) - target(x)) ** 2)

    xt, st = randn(100, (256, 16, 1)), randn(101, (256,))
    before = float(evaluate(m, xt, st))
    np.testing.assert_allclose(
        before, float(jnp.mean(target(xt) ** 2)), rtol=1e-6
    )  # output starts at 0
    key = jax.random.key(0)
    for i in range(120):
        kx, ks = jax.random.split(jax.random.fold_in(key, i))
        step(m, opt, jax.random.normal(kx, (32, 16, 1)), jax.random.normal(ks, (32,)))
    after = float(evaluate(m, xt, st))
    assert after < before / 50, (before, after)
