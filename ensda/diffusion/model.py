r"""The conditional denoiser network of the analysis increment (DESIGN §4).

Per grid site the network sees five channels,

    [ c_in·z_σ,   (x̄_b − μ)/σ_clim,   σ_b/s,   m·(y − x̄_b)/s,   m ]

the noisy normalised increment, the normalised background mean and spread, and the
observation channels: the observed increment where a site is observed (mask m = 1) and
the mask. With the observation channels zero the network is the background-conditioned
prior model p(z | x̄_b, σ_b), used with likelihood guidance or RePaint; with them it is the
amortised conditional model p(z | x̄_b, σ_b, y) (trained on random networks). One network
serves both (the observation channels are dropped at random in training, as in
classifier-free guidance; Ho & Salimans 2022).

The noise level enters through the conditional LayerNorms of ``ensda.nn.GraphNetwork``
(c_noise = log σ / 4, EDM preconditioning in ``ensda.diffusion.edm``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ensda.diffusion.data import Normalisation
from ensda.diffusion.edm import EDM
from ensda.nn import GNNConfig, Graph, GraphNetwork

#: background mean, background spread, observed increment, observation mask
N_CONDITION = 4
IN_FEATURES = 1 + N_CONDITION


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint needs to rebuild its network and use it."""

    n: int
    gnn: GNNConfig
    edm: EDM
    #: observation error std the observation channels were trained with
    obs_r_std: float

    def to_dict(self) -> dict:
        return {"n": self.n, "gnn": dataclasses.asdict(self.gnn), "edm": dataclasses.asdict(self.edm), "obs_r_std": self.obs_r_std}

    @staticmethod
    def from_dict(data: dict) -> ModelSpec:
        return ModelSpec(int(data["n"]), GNNConfig(**data["gnn"]), EDM(**data["edm"]), float(data["obs_r_std"]))


def build_network(spec: ModelSpec, graph: Graph, key: int | jax.Array = 0) -> GraphNetwork:
    return GraphNetwork(IN_FEATURES, 1, graph, spec.gnn, conditional=True, rngs=nnx.Rngs(key))


def condition_features(
    norm: Normalisation, mean: jax.Array, spread: jax.Array, innovation: jax.Array, mask: jax.Array
) -> jax.Array:
    """The four conditioning channels ``(..., n, 4)`` (see the module docstring).

    ``innovation`` is the observed increment (y − x̄_b)/s at observed sites (0 elsewhere).
    """
    background = (mean - norm.clim_mean) / norm.clim_std
    return jnp.stack([background, spread / norm.increment_std, innovation * mask, mask], axis=-1)


def observation_channels(norm: Normalisation, mean: jax.Array, obs) -> tuple[jax.Array, jax.Array]:
    """Observed increment and mask on the grid from ``Observations`` with an identity operator."""
    if not obs.linear:
        raise ValueError(
            f"the observation channels need an identity observation operator, got {obs.operator!r}; "
            "use likelihood guidance (obs_channels: false, guidance_strength > 0) for nonlinear operators"
        )
    n = mean.shape[-1]
    scale = jnp.asarray(norm.increment_std)
    innovation = jnp.zeros((n,), mean.dtype).at[obs.idx].set((obs.y - mean[obs.idx]) / scale[obs.idx])
    mask = jnp.zeros((n,), mean.dtype).at[obs.idx].set(1.0)
    return innovation, mask


def network_fn(model: GraphNetwork, graph: Graph, condition: jax.Array):
    """``net(z_in, c_noise) -> F`` with the conditioning channels bound (the EDM ``net``).

    z_in ``(..., n)``, condition ``(..., n, 4)`` broadcastable to it, c_noise ``(...)``.
    """

    def net(z_in: jax.Array, c_noise: jax.Array) -> jax.Array:
        cond = jnp.broadcast_to(condition, z_in.shape + (N_CONDITION,))
        nodes = jnp.concatenate([z_in[..., None], cond], axis=-1)
        return model(graph, nodes, c_noise)[..., 0]

    return net


def to_state(norm: Normalisation, mean: jax.Array, z: jax.Array) -> jax.Array:
    """x = x̄_b + s z."""
    return mean + jnp.asarray(norm.increment_std) * z

