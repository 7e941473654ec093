r"""``DiffusionDA``: the diffusion analysis ensemble (method ``diffusion``; docs/design.md §4).

Given the background ensemble (mean x̄_b, spread σ_b) and the observations y of a cycle,
each of the N members is an independent sample z ~ p(z | x̄_b, σ_b, y) of the normalised
increment, drawn with an EDM sampler (Heun or DPM-Solver++(2S)), and mapped back to the
state x = x̄_b + s z. Observations enter by any combination of

* ``obs_channels``: the observed increment and mask as network inputs (amortised);
* ``guidance_strength`` λ > 0: likelihood guidance ∇ log N(y | H(x̂₀), R + γ v(σ) I)
  through the denoiser (works with nonlinear H; ``ensda.diffusion.guidance``);
* ``repaint_jumps`` > 0: RePaint inpainting of the observed increment with a soft
  Gaussian mask of ``mask_width`` (sites on Lorenz-96, km on the sphere) and that many
  resampling jumps (the DiffDA method; identity H only). Each state element takes the
  increment observed in its channel at the nearest observed column.

The same class runs on Lorenz-96 (a ring network, one channel per site) and on the
sphere (a grid ↔ multi-mesh network, C channels per column; ``ensda.diffusion.model``):
the checkpoint says which.

Member j uses the key ``fold_in(key, j)``; members are ``vmap``-ped and, with several
devices, sharded along a mesh axis ``ens`` (the result equals the unsharded one).

``coupling`` sets where each member's sampler starts: ``independent`` (docs/design.md §4) draws
x_T = σ_max ε with fresh noise, so the N members are independent posterior samples and the
analysis mean carries a sampling error of variance s²/N per element; cycled with few
observations that error accumulates, a random walk of the ensemble mean (experiments/README,
"Sphere: diffusion DA"). ``background`` starts member j from its own standardised
background deviation, ε_j = (x_b,j − x̄_b)/σ_b, x_T = σ_max ε_j: the probability-flow ODE
(churn 0) is then a deterministic transport of the background ensemble to the analysis
ensemble. Where the observations say nothing and the prior of z is Gaussian the ODE is a
linear map, so the members keep their background deviations (scaled) and the mean does not
move (Σ_j ε_j = 0): the analysis then behaves as an ensemble transform (as the ETKF keeps
the forecast anomalies), and the members keep the spatial and multivariate structure of
the forecast deviations. With ``rtps: 1`` the analysis spread is relaxed back to the
background's.

``localisation`` c (optional) keeps the model's increments where observations are:

    x_a,j = x_b,j + ρ ⊙ (x̃_j − x_b,j),   ρ = GC(d / c),

with x̃_j the sampled member, d each element's distance to the nearest observation in its
channel and GC the Gaspari–Cohn taper (Gaspari & Cohn 1999; 1 at d = 0, 0 for d ≥ 2c).
Beyond 2c the members stay the forecast members, as in a localised EnKF where no
observation is within reach. On the sphere at 1 % columns the unlocalised model's
increments far from every observation are systematic and spatially incoherent, and cycled
they drift (experiments/README, "Sphere: diffusion DA").
NFE (denoiser forward calls per member and analysis) is ``nfe``; guidance adds one
backward pass through the network per call.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field

from baselines.localization import gaspari_cohn
from ensda.assimilator import register
from ensda.diffusion.checkpoint import load_checkpoint, testbed_record
from ensda.diffusion.data import Normalisation
from ensda.diffusion.edm import EDM
from ensda.diffusion.guidance import likelihood_guided
from ensda.diffusion.model import (
    condition_features,
    network_fn,
    observation_channels,
    to_state,
)
from ensda.diffusion.repaint import repaint_nfe, repaint_sample, soft_mask
from ensda.diffusion.samplers import SamplerConfig, nfe, sample
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static

ENS_AXIS = "ens"


def ensemble_sharding(n_members: int) -> jax.sharding.NamedSharding | None:
    """Members split over all devices along ``ens``; None with one device or N not divisible."""
    devices = jax.devices()
    if len(devices) < 2 or n_members % len(devices):
        return None
    mesh = jax.sharding.Mesh(np.asarray(devices), (ENS_AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(ENS_AXIS))


def _column_distance(testbed) -> jax.Array:
    """Distances ``(G, G)`` between the grid columns: sites on Lorenz-96, km on the sphere."""
    grid = testbed.testbed.grid if hasattr(testbed, "testbed") else testbed.grid
    cols = jnp.arange(grid.n)
    return grid.distance(cols[:, None], cols[None, :])


def _trained_and_network_r_std(spec, network) -> tuple[np.ndarray, np.ndarray]:
    """The observation error std the model was trained with and the network's, per
    observed channel (one value on Lorenz-96)."""
    if not hasattr(network, "observed_channels"):
        return np.asarray(spec.obs_r_std), np.atleast_1d(np.asarray(network.r_std, np.float64))
    trained = np.asarray(spec.obs_r_std)[list(network.observed_channels)]
    return trained, np.asarray(network.channel_r_std(), np.float64)


@register
@pytree_dataclass
class DiffusionDA:
    name: ClassVar[str] = "diffusion"
    ensemble: ClassVar[bool] = True

    params: Any  # network weights (pytree)
    graph: Any  # the ring ``Graph`` or the sphere's ``GridMeshGraphs``
    norm: Normalisation
    distance: jax.Array  # (G, G) distances between grid columns, for the RePaint soft mask
    graphdef: Any = static(None, setting=False)
    n_channels: int = static(1, setting=False)
    edm: EDM = static(EDM(), setting=False)
    #: checkpoint directory written by ``ensda train``
    checkpoint: str = static("checkpoints/l96")
    sampler: Literal["heun", "dpm2s"] = static("heun")
    steps: Annotated[int, Field(ge=1)] = static(20)
    churn: Annotated[float, Field(ge=0)] = static(0.0)
    obs_channels: bool = static(True)
    guidance_strength: Annotated[float, Field(ge=0)] = static(0.0)
    guidance_gamma: Annotated[float, Field(ge=0)] = static(1.0)
    guidance_cov: Literal["scalar", "jacobian"] = static("scalar")
    repaint_jumps: Annotated[int, Field(ge=0)] = static(0)
    mask_width: Annotated[float, Field(ge=0)] = static(0.0)
    #: member j's initial noise: fresh (``independent``) or its standardised background deviation
    coupling: Literal["independent", "background"] = static("independent")
    #: increment localisation: member j's analysis is x_b,j + ρ (x̃_j − x_b,j), ρ the
    #: Gaspari–Cohn taper of the distance to the nearest observation (half-width in sites
    #: on Lorenz-96, km on the sphere; zero beyond twice it); None: off
    localisation: Annotated[float, Field(gt=0)] | None = static(None)
    #: shard members over all visible devices (when N divides evenly)
    shard: bool = static(True)

    @classmethod
    def build(cls, ctx, **settings) -> DiffusionDA:
        """``settings`` come validated with every default filled in (``assimilator.build``)."""
        if not (
            settings["obs_channels"]
            or settings["guidance_strength"] > 0
            or settings["repaint_jumps"] > 0
        ):
            raise ValueError(
                "no observation conditioning selected: set obs_channels, guidance_strength > 0 or "
                "repaint_jumps > 0"
            )
        if settings["coupling"] == "background" and settings["repaint_jumps"] > 0:
            raise ValueError(
                "coupling: background needs the ODE sampler; RePaint (repaint_jumps > 0) re-noises "
                "at every jump, so use coupling: independent with it"
            )
        network = ctx.network
        if network.n_obs < 1:
            raise ValueError("the observation network observes nothing")
        operator = getattr(network, "operator", "identity")
        if operator != "identity" and (settings["obs_channels"] or settings["repaint_jumps"] > 0):
            raise ValueError(
                "obs_channels and RePaint need the identity observation operator, got "
                f"{operator!r}; use obs_channels: false with guidance_strength > 0"
            )
        ck = load_checkpoint(settings["checkpoint"], testbed_record(ctx.testbed))
        if settings["obs_channels"]:
            trained, observed = _trained_and_network_r_std(ck.spec, network)
            if not np.allclose(trained, observed):
                raise ValueError(
                    f"the model's observation channels were trained with r_std {trained.tolist()}, "
                    f"the network has r_std {observed.tolist()}; retrain or use guidance "
                    "(obs_channels: false)"
                )
        graphdef, params = nnx.split(ck.model)
        return cls(
            params=params,
            graph=ck.spec.graph(),
            norm=ck.norm,
            distance=_column_distance(ctx.testbed),
            graphdef=graphdef,
            edm=ck.spec.edm,
            n_channels=ck.spec.n_channels,
            **settings,
        )

    @property
    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(kind=self.sampler, steps=self.steps, churn=self.churn)

    @property
    def nfe(self) -> int:
        """Denoiser forward calls per member and analysis."""
        if self.repaint_jumps:
            return repaint_nfe(self.sampler_config, self.repaint_jumps)
        return nfe(self.sampler_config)

    def denoiser(self, mean: jax.Array, spread: jax.Array, obs: Observations):
        """The (guided) denoiser D(z, σ) of this background and these observations."""
        n = mean.shape[-1]
        scale = self.norm.scale(spread)
        if self.obs_channels:
            innovation, mask = observation_channels(scale, mean, obs)
        else:
            innovation = mask = jnp.zeros((n,), mean.dtype)
        cond = condition_features(self.norm, mean, spread, innovation, mask)
        model = nnx.merge(self.graphdef, self.params)
        denoise = self.edm.denoiser(network_fn(model, self.graph, cond, self.n_channels))
        if self.guidance_strength > 0:
            # observations in units of the increment std s at their sites, so that the
            # γ σ² term (a variance of z) and R are in the same units
            s_obs = scale[obs.idx]
            denoise = likelihood_guided(
                denoise,
                lambda z: obs.h(to_state(scale, mean, z)) / s_obs,
                obs.y / s_obs,
                (obs.r_std / s_obs) ** 2,
                self.guidance_strength,
                self.guidance_gamma,
                self.edm.sigma_data,
                self.guidance_cov,
            )
        return denoise

    def nearest_observation(self, obs: Observations) -> tuple[jax.Array, jax.Array]:
        """For every state element ``(n,)``: the index (into ``obs.y``) of the nearest
        observation in its channel and the distance to it (``inf`` if the channel is unobserved)."""
        n_columns = self.distance.shape[0]
        d = self.distance[:, obs.sites]  # (G, p)
        channel = obs.idx // n_columns

        def in_channel(c):
            dc = jnp.where(channel[None, :] == c, d, jnp.inf)
            return jnp.argmin(dc, axis=1), dc.min(axis=1)

        nearest, dist = jax.lax.map(in_channel, jnp.arange(self.n_channels))  # (C, G) each
        return nearest.reshape(-1), dist.reshape(-1)

    def repaint_known(
        self, mean: jax.Array, scale: jax.Array, obs: Observations
    ) -> tuple[jax.Array, jax.Array]:
        """Known increment (in units of ``scale``) and soft mask of every state element: the
        increment observed in its channel at the nearest observed column, the mask of that
        distance."""
        observed = (obs.y - mean[obs.idx]) / scale[obs.idx]
        nearest, dist = self.nearest_observation(obs)
        return observed[nearest], soft_mask(dist, self.mask_width)

    def localisation_weights(self, obs: Observations) -> jax.Array:
        """ρ ``(n,)``: Gaspari–Cohn of each element's distance to the nearest observation in
        its channel, half-width ``localisation`` (set)."""
        return gaspari_cohn(self.nearest_observation(obs)[1], self.localisation)

    def sample_increments(
        self, background: jax.Array, obs: Observations, key: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Normalised increments ``(N, n)`` and the runtime denoiser-call counts ``(N,)``."""
        return self._sample(background.mean(0), background.std(0, ddof=1), background, obs, key)

    def _sample(
        self,
        mean: jax.Array,
        spread: jax.Array,
        background: jax.Array,
        obs: Observations,
        key: jax.Array,
    ):
        n_members, n = background.shape
        denoise = self.denoiser(mean, spread, obs)
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n_members))
        sharding = ensemble_sharding(n_members) if self.shard else None
        if sharding is not None:
            keys = jax.lax.with_sharding_constraint(keys, sharding)
        if self.repaint_jumps:
            known, mask = self.repaint_known(mean, self.norm.scale(spread), obs)
            draw = lambda k: repaint_sample(
                denoise, k, known, mask, self.edm, self.sampler_config, self.repaint_jumps
            )
            z, count = jax.vmap(draw)(keys)
        elif self.coupling == "background":
            eps = (background - mean) / jnp.where(spread > 0, spread, 1.0)
            start = lambda k, e: sample(
                denoise, k, (n,), self.edm, self.sampler_config, x_init=self.edm.sigma_max * e
            )
            z, count = jax.vmap(start)(keys, eps)
        else:
            z, count = jax.vmap(lambda k: sample(denoise, k, (n,), self.edm, self.sampler_config))(
                keys
            )
        if sharding is not None:
            z = jax.lax.with_sharding_constraint(z, sharding)
        return z, count

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        mean, spread = background.mean(0), background.std(0, ddof=1)
        z, _ = self._sample(mean, spread, background, obs, key)
        analysis = to_state(self.norm.scale(spread), mean, z)
        if self.localisation is None:
            return analysis
        return background + self.localisation_weights(obs) * (analysis - background)
