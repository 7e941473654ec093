r"""The conditional denoiser network of the analysis increment (docs/design.md §4).

States are flat vectors of ``n = C · G`` elements: C channels at each of G grid nodes,
channel-major (element ``c · G + g``). On Lorenz-96 C = 1 and the nodes are the ring's
sites; on the sphere C is the number of variables × levels and the nodes are the lat–lon
grid's columns. Per node the network sees 5C channels,

    [ c_in·z_σ,   (x̄_b − μ)/σ_clim,   σ_b/s,   m·(y − x̄_b)/s,   m ]

(each C wide): the noisy normalised increment, the normalised background mean and spread,
and the observation channels: the observed increment where an element is observed (mask
m = 1) and the mask. With the observation channels zero the network is the
background-conditioned prior model p(z | x̄_b, σ_b), used with likelihood guidance or
RePaint; with them it is the amortised conditional model p(z | x̄_b, σ_b, y) (trained on
random networks). One network serves both (the observation channels are dropped at random
in training, as in classifier-free guidance; Ho & Salimans 2022).

The network is ``ensda.nn.GraphNetwork`` on the ring graph (Lorenz-96) or
``ensda.nn.SphereGraphNetwork`` on the grid ↔ icosahedral multi-mesh graphs (the sphere,
``ModelSpec.sphere``). The noise level enters through their conditional LayerNorms
(c_noise = log σ / 4, EDM preconditioning in ``ensda.diffusion.edm``).

With ``ModelSpec.elementwise`` = w > 0 the output is F_i = GNN(…)_i + g_i f(u_i, c_noise), f an
MLP of width w shared by every element i, u_i the element's own 5 features
(``WithElementwise``), g_i = m_i (the observation mask) with ``elementwise_observed_only``,
else 1. On the sphere a node carries all C channels through a latent of fixed width (64
for 53 channels × 5 features), too narrow to pass each observed increment on to its
element; f passes it directly (the optimal D at an observed element is a σ-dependent
blend of z_σ and the observed increment). Ungated, f also acts where nothing is observed,
as a function of the element's background alone (experiments/README, "Does the denoiser
use the observations?": that model diverged when cycled).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ensda.diffusion.data import Normalisation
from ensda.diffusion.edm import EDM
from ensda.nn import GNNConfig, GraphNetwork, SphereGraphNetwork, ring_graph
from ensda.nn.layers import MLP
from ensda.testbeds.sphere.grid import mesh_graphs

#: background mean, background spread, observed increment, observation mask
N_CONDITION = 4
IN_FEATURES = 1 + N_CONDITION


@dataclasses.dataclass(frozen=True)
class SphereMesh:
    """The lat–lon grid (``n_lon`` × ``n_lat``, equiangular) and the multi-mesh refinement."""

    n_lon: int
    n_lat: int
    refinement: int = 3

    @property
    def n_nodes(self) -> int:
        return self.n_lon * self.n_lat

    def graphs(self):
        return mesh_graphs(self.n_lon, self.n_lat, self.refinement)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs to rebuild its network and use it."""

    n: int  # state size C · G
    gnn: GNNConfig
    edm: EDM
    #: observation error std the observation channels were trained with, per channel
    obs_r_std: tuple[float, ...]
    #: the sphere's grid and mesh; None: the ring of ``n`` sites (Lorenz-96, one channel)
    sphere: SphereMesh | None = None
    #: width of the per-element path (``WithElementwise``); 0: the GNN alone
    elementwise: int = 0
    #: the per-element path acts only at observed elements (gated by the mask)
    elementwise_observed_only: bool = False

    def __post_init__(self):
        if self.n % self.n_nodes:
            raise ValueError(
                f"ModelSpec: state size {self.n} is not a multiple of the {self.n_nodes} grid nodes"
            )
        if len(self.obs_r_std) != self.n_channels:
            raise ValueError(
                f"ModelSpec: {len(self.obs_r_std)} observation error stds for {self.n_channels} "
                "channels"
            )

    @property
    def n_nodes(self) -> int:
        return self.n if self.sphere is None else self.sphere.n_nodes

    @property
    def n_channels(self) -> int:
        return self.n // self.n_nodes

    def graph(self):
        """The network's graph(s): the ring, or the sphere's ``GridMeshGraphs``."""
        return ring_graph(self.n) if self.sphere is None else self.sphere.graphs()

    def element_r_std(self) -> jax.Array:
        """The trained observation error std of every state element ``(n,)``."""
        return jnp.repeat(jnp.asarray(self.obs_r_std, jnp.float32), self.n_nodes)

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "gnn": dataclasses.asdict(self.gnn),
            "edm": dataclasses.asdict(self.edm),
            "obs_r_std": list(self.obs_r_std),
            "sphere": None if self.sphere is None else dataclasses.asdict(self.sphere),
            "elementwise": self.elementwise,
            "elementwise_observed_only": self.elementwise_observed_only,
        }

    @staticmethod
    def from_dict(data: dict) -> ModelSpec:
        r_std = data["obs_r_std"]
        sphere = data.get("sphere")
        return ModelSpec(
            int(data["n"]),
            GNNConfig(**data["gnn"]),
            EDM(**data["edm"]),
            tuple(float(v) for v in (r_std if isinstance(r_std, list) else [r_std])),
            None if sphere is None else SphereMesh(**sphere),
            int(data.get("elementwise", 0)),
            bool(data.get("elementwise_observed_only", False)),
        )


class WithElementwise(nnx.Module):
    """A GNN and the per-element path f(u_i, c_noise) added to its output (module docstring).

    f: Linear → swish → Linear → swish → Linear (width ``width``), the last layer zero at
    initialisation, so a new model is the GNN alone; with ``observed_only`` the term is
    multiplied by the element's observation mask (its last feature).
    """

    def __init__(
        self,
        network: GraphNetwork | SphereGraphNetwork,
        width: int,
        *,
        observed_only: bool = False,
        rngs: nnx.Rngs,
    ):
        self.network = network
        self.observed_only = observed_only
        self.elementwise = MLP(
            IN_FEATURES + 1, width, 1, hidden_layers=2, layer_norm=False, rngs=rngs
        )
        last = self.elementwise.layers[-1]
        last.kernel[...] = jnp.zeros_like(last.kernel[...])
        last.bias[...] = jnp.zeros_like(last.bias[...])

    def element_term(self, features: jax.Array, c_noise: jax.Array) -> jax.Array:
        """f of per-element features ``(..., n, 5)`` and c_noise ``(...)``: ``(..., n)``."""
        noise = jnp.broadcast_to(
            jnp.asarray(c_noise, features.dtype)[..., None, None], features.shape[:-1] + (1,)
        )
        term = self.elementwise(jnp.concatenate([features, noise], axis=-1))[..., 0]
        return term * features[..., -1] if self.observed_only else term


def build_network(
    spec: ModelSpec, graph, key: int | jax.Array = 0
) -> GraphNetwork | SphereGraphNetwork | WithElementwise:
    c = spec.n_channels
    rngs = nnx.Rngs(key)
    if spec.sphere is None:
        network = GraphNetwork(IN_FEATURES, 1, graph, spec.gnn, conditional=True, rngs=rngs)
    else:
        network = SphereGraphNetwork(
            IN_FEATURES * c, c, graph, spec.gnn, conditional=True, rngs=rngs
        )
    if spec.elementwise == 0:
        return network
    return WithElementwise(
        network, spec.elementwise, observed_only=spec.elementwise_observed_only, rngs=rngs
    )


def to_nodes(a: jax.Array, n_channels: int) -> jax.Array:
    """Flat per-element features ``(..., C·G, F)`` → per-node features ``(..., G, C·F)``."""
    lead, f = a.shape[:-2], a.shape[-1]
    a = a.reshape(lead + (n_channels, -1, f))
    return jnp.moveaxis(a, -3, -2).reshape(lead + (a.shape[-2], n_channels * f))


def from_nodes(a: jax.Array) -> jax.Array:
    """Per-node channels ``(..., G, C)`` → flat state ``(..., C·G)`` (channel-major)."""
    return jnp.swapaxes(a, -1, -2).reshape(a.shape[:-2] + (-1,))


def condition_features(
    norm: Normalisation, mean: jax.Array, spread: jax.Array, innovation: jax.Array, mask: jax.Array
) -> jax.Array:
    """The four conditioning channels ``(..., n, 4)`` (see the module docstring).

    ``innovation`` is the observed increment (y − x̄_b)/s at observed elements (0 elsewhere).
    """
    background = (mean - norm.clim_mean) / norm.clim_std
    return jnp.stack([background, spread / norm.increment_std, innovation * mask, mask], axis=-1)


def observation_channels(scale: jax.Array, mean: jax.Array, obs) -> tuple[jax.Array, jax.Array]:
    """Observed increment (y − x̄_b)/s and mask of every state element from ``Observations``
    with an identity operator (``scale`` s: ``Normalisation.scale``)."""
    if not obs.linear:
        raise ValueError(
            "the observation channels need an identity observation operator, got "
            f"{obs.operator!r}; use likelihood guidance (obs_channels: false, guidance_strength > "
            "0) for nonlinear operators"
        )
    n = mean.shape[-1]
    innovation = (
        jnp.zeros((n,), mean.dtype).at[obs.idx].set((obs.y - mean[obs.idx]) / scale[obs.idx])
    )
    mask = jnp.zeros((n,), mean.dtype).at[obs.idx].set(1.0)
    return innovation, mask


def network_fn(
    model: GraphNetwork | SphereGraphNetwork | WithElementwise,
    graph,
    condition: jax.Array,
    n_channels: int = 1,
):
    """``net(z_in, c_noise) -> F`` with the conditioning channels bound (the EDM ``net``).

    z_in ``(..., n)``, condition ``(..., n, 4)`` broadcastable to it, c_noise ``(...)``;
    ``n_channels`` C splits the flat state into C channels per node (module docstring).
    """

    gnn = model.network if isinstance(model, WithElementwise) else model

    def net(z_in: jax.Array, c_noise: jax.Array) -> jax.Array:
        cond = jnp.broadcast_to(condition, z_in.shape + (N_CONDITION,))
        features = jnp.concatenate([z_in[..., None], cond], axis=-1)
        out = from_nodes(gnn(graph, to_nodes(features, n_channels), c_noise))
        if gnn is model:
            return out
        return out + model.element_term(features, c_noise)

    return net


def to_state(scale: jax.Array, mean: jax.Array, z: jax.Array) -> jax.Array:
    """x = x̄_b + s z (``scale`` s: ``Normalisation.scale``)."""
    return mean + scale * z
