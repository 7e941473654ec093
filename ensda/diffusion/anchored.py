r"""``ens-diffusion``: a diffusion analysis ensemble anchored on a localised ensemble analysis.

The DiffDA-style ``diffusion`` method sees each site's background mean and spread but not
the ensemble's cross-covariances, so it cannot carry an observation to unobserved
neighbours (experiments/README, "Diffusion DA on Lorenz-96"). This method takes the
flow-dependent part from the background ensemble itself: an LETKF analysis (the *anchor*,
mean x̄_a, members x_a,j, spread σ_a) is computed first, and the denoiser learns the
residual the anchor leaves,

    z = (t − x̄_a) / s_a,   s_a = √(σ_a² + (f u)²)
    (f = ``SPREAD_FLOOR``, u: ``AnchorNormalisation``),

conditioned per site on (``features``): the background mean and spread, the anchor's mean
increment x̄_a − x̄_b and spread σ_a, the residual innovation y − mean_j h(x_a,j) (raw and
relative to its expected spread) and the observation mask at observed sites, and the
distance to the nearest observation. The
analysis members are x_j = x̄_a + s_a z_j, with z_j drawn by an EDM sampler.

``coupling`` sets where member j's reverse process starts:

* ``anchor``: from its own standardised anchor anomaly, x_T = w (x_a,j − x̄_a)/s_a,
  w = √(σ_max² + σ_d²) (the width of unit-variance residuals at σ_max).
  The probability-flow ODE (churn 0) is then a transport of the anchor ensemble; where the
  model's residual is Gaussian N(μ, c²) the map is linear, x_j = x̄_a + s_a (μ + c ε_j), so
  the members keep the anchor's (and so the background's) flow-dependent anomaly structure,
  the mean moves by s_a μ only, and the model corrects the spread by c. With a network that
  outputs F = 0 (the untrained model, N(0, 1) residuals) the analysis ensemble is the
  LETKF's; with a denoiser D ≡ 0 (zero residual) every member is x̄_a (tests).
  But the anomalies are smooth, correlated fields, while the denoiser was trained on white
  noise: from such starts the learnt (nonlinear) flow leaves its training distribution, and
  measured on cycled every-4th-site backgrounds it widened the analysis ×1.5 where the same
  model's independent samples are calibrated (experiments/README).
* ``independent``: x_T = w ε_j with fresh noise, in antithetic pairs (ε_{j+N/2} = −ε_j), so
  the members are posterior samples of z whose mean has little sampling noise (with
  independent ε the analysis mean of an on-track every-4th-site cycle was 3 % worse than
  the anchor's: the s_a/√N noise of a sample mean).
* ``affine`` (default): independent samples give each site's mean μ̂ and spread ĉ of z, and
  member j is x̄_a + s_a (μ̂ + ĉ ε̃_j), ε̃_j its anchor anomaly standardised per site: the
  linear transport the ODE makes of Gaussian residuals, with the network only ever fed white
  noise; the members keep exactly the anchor's anomaly correlations across sites.
* ``ecc``: independent samples, then at each site the sorted samples are handed to
  the members in the order of the anchor members' ranks there (ensemble copula coupling,
  Schefzik et al. 2013): the model's marginals with the anchor ensemble's flow-dependent rank
  structure across sites.

The residuals are O(1), so the model is trained and sampled with σ_max ≈ 5 (not EDM's 80):
at 20 Heun steps the probability-flow map of exact N(0, 1) residuals then scales the members
by 1.011 (1.035 at σ_max 80; 1.29 at 5 steps), ``experiments/README``.

Training (``ensda.training.anchored``) uses cycled LETKF runs with random settings
and, in later rounds, the method's own cycled backgrounds (DAgger-style). The anchor's
settings (``anchor_radius``, ``anchor_inflation``, ``anchor_rtps``) are those of the LETKF
(Hunt et al. 2007); inflation / RTPS of the method itself wrap the whole analysis as for
every ensemble method. With ``guidance_strength`` λ > 0 the denoiser is also guided by the
likelihood of the observations through h(x̄_a + s_a D(z, σ)) (DPS; any operator h), the
information a Gaussian anchor update leaves unused with a nonlinear h. Lorenz-96 only for now.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field

from baselines.localization import gaspari_cohn
from ensda import assimilator as registry
from ensda.checkpoint import CheckpointError, read_meta, read_params, write_checkpoint
from ensda.diffusion.checkpoint import check_testbed, testbed_record
from ensda.diffusion.edm import EDM
from ensda.diffusion.guidance import likelihood_guided
from ensda.diffusion.samplers import SamplerConfig, nfe, sample
from ensda.inflation import inflate, relax_to_prior_spread
from ensda.nn import GNNConfig, GraphNetwork, ring_graph
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static

#: per-site conditioning channels (``features``) and network inputs (z_σ + those)
N_FEATURES = 9
FORMAT = 2
MODEL_KIND = "anchored"
#: the floor f of the residual scale s_a, as a fraction of the residual std u
SPREAD_FLOOR = 0.05
#: distances to the nearest observation enter the network as d / DISTANCE_SCALE, capped at 1
DISTANCE_SCALE = 10.0
#: Gaspari–Cohn half-width (sites) of the local background-innovation consistency ratio
CONSISTENCY_RADIUS = 5.0


# ---------------------------------------------------------------------------- the anchor


@pytree_dataclass
class Anchor:
    """The LETKF anchor with its prior inflation and RTPS as array data, so that anchors with
    different settings stack and ``vmap`` (training runs): X_b' = inflate(X_b, ρ),
    X_a = RTPS(X_b', LETKF(X_b'), α) (as ``ensda.inflation.wrap``)."""

    letkf: Any
    inflation: jax.Array
    rtps: jax.Array

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        prior = inflate(background, self.inflation)
        return relax_to_prior_spread(prior, self.letkf.analyse(prior, obs, key), self.rtps)


def make_anchor(ctx, radius: float, inflation: float, rtps: float) -> Anchor:
    """The anchor LETKF of a set-up (from the method registry: no import of the baselines)."""
    letkf = registry.get("letkf").build(ctx, radius=radius)
    return Anchor(letkf, jnp.float32(inflation), jnp.float32(rtps))


def with_radius(anchor: Anchor, radius: jax.Array) -> Anchor:
    """The anchor with its Gaspari–Cohn taper recomputed for ``radius`` (≤ the radius it was
    built with, whose neighbourhoods it keeps), so anchors of several radii share one shape."""
    letkf = anchor.letkf
    sites = jnp.arange(letkf.neighbours.shape[0])[:, None]
    taper = gaspari_cohn(letkf.grid.distance(sites, letkf.neighbours), radius)
    return dataclasses.replace(anchor, letkf=dataclasses.replace(letkf, taper=taper))


# ---------------------------------------------------------------------------- features


def site_distances(grid) -> jax.Array:
    """Distances ``(n, n)`` between the sites of a 1-D ``grid`` (``RingGrid``)."""
    sites = jnp.arange(grid.n)
    return grid.distance(sites[:, None], sites[None, :])


@pytree_dataclass
class AnchorSummary:
    """What the denoiser is conditioned on, in state units, per site ``(..., n)``."""

    mean_b: jax.Array
    spread_b: jax.Array
    mean_a: jax.Array
    spread_a: jax.Array
    innovation: jax.Array  # y − mean_j h(x_a,j) at observed sites, 0 elsewhere
    innovation_std: jax.Array  # √(var_j h(x_a,j) + r²) at observed sites, 1 elsewhere
    mask: jax.Array  # 1 at observed sites
    distance: jax.Array  # to the nearest observed site
    consistency: jax.Array  # local Σ w d_b² / Σ w (var h_b + r²), 1 where no observation is near


def summarise(
    background: jax.Array, analysis: jax.Array, obs: Observations, distance: jax.Array
) -> AnchorSummary:
    """The ``AnchorSummary`` of one cycle: background and anchor ensembles ``(N, n)``, the
    observations and the ``(n, n)`` distances between sites.

    ``consistency`` is the innovation check of adaptive inflation (Desroziers et al. 2005;
    Miyoshi 2011), localised: with background innovations d_k = y_k − mean_j h_k(x_b,j),

        g_i = Σ_k w_ik d_k² / Σ_k w_ik (var_j h_k(x_b,j) + r_k²),
        w_ik = GC(dist(i, site_k), ``CONSISTENCY_RADIUS``),

    whose expectation is 1 where the background spread matches its error (> 1: an
    over-confident background), 1 where no observation lies within the taper.
    """
    n = background.shape[-1]
    sites = obs.sites
    hb = obs.h(background)
    w = gaspari_cohn(distance[:, sites], CONSISTENCY_RADIUS)  # (n, p)
    d2 = jnp.square(obs.y - hb.mean(0))
    expected = hb.var(0, ddof=1) + jnp.square(obs.r_std)
    denom = w @ expected
    consistency = jnp.where(denom > 0, (w @ d2) / jnp.where(denom > 0, denom, 1.0), 1.0)
    hx = obs.h(analysis)
    innovation = jnp.zeros((n,), background.dtype).at[sites].set(obs.y - hx.mean(0))
    std = jnp.ones((n,), background.dtype).at[sites].set(jnp.sqrt(hx.var(0, ddof=1) + obs.r_std**2))
    mask = jnp.zeros((n,), background.dtype).at[sites].set(1.0)
    nearest = jnp.min(jnp.where(mask[None, :] > 0, distance, jnp.inf), axis=-1)
    return AnchorSummary(
        background.mean(0),
        background.std(0, ddof=1),
        analysis.mean(0),
        analysis.std(0, ddof=1),
        innovation,
        std,
        mask,
        nearest,
        consistency,
    )


@pytree_dataclass
class AnchorNormalisation:
    """Climatological mean μ and std σ_c of the truth and the residual std u = RMS(t − x̄_a)
    over the training set (pooled over sites: Lorenz-96 is homogeneous), scalars."""

    clim_mean: jax.Array
    clim_std: jax.Array
    residual_std: jax.Array

    @staticmethod
    def fit(summary: AnchorSummary, truth: np.ndarray) -> AnchorNormalisation:
        truth = np.asarray(truth, np.float64)
        resid = truth - np.asarray(summary.mean_a, np.float64)
        return AnchorNormalisation(
            *(np.float32(v) for v in (truth.mean(), truth.std(), np.sqrt(np.mean(resid**2))))
        )

    def scale(self, spread_a: jax.Array) -> jax.Array:
        """s_a = √(σ_a² + (f u)²)."""
        return jnp.sqrt(jnp.square(spread_a) + jnp.square(SPREAD_FLOOR * self.residual_std))

    def to_dict(self) -> dict:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @staticmethod
    def from_dict(data: dict) -> AnchorNormalisation:
        return AnchorNormalisation(
            *(jnp.float32(data[f.name]) for f in dataclasses.fields(AnchorNormalisation))
        )


def features(norm: AnchorNormalisation, s: AnchorSummary) -> jax.Array:
    """The ``N_FEATURES`` conditioning channels ``(..., n, 9)``:

    [ (x̄_b − μ)/σ_c,  σ_b/u,  (x̄_a − x̄_b)/u,  σ_a/u,  m (y − h̄_a)/u,
      m (y − h̄_a)/√(var h_a + r²),  m,  min(d/10, 1),  ½ log g (clipped to ±3) ]

    (the residual innovation both in state units and relative to what the anchor expects
    of it, and the local innovation consistency g of the background (``summarise``): signs
    of an over- or under-confident background and anchor, from which the model learns an
    adaptive spread).
    """
    u = norm.residual_std
    return jnp.stack(
        [
            (s.mean_b - norm.clim_mean) / norm.clim_std,
            s.spread_b / u,
            (s.mean_a - s.mean_b) / u,
            s.spread_a / u,
            s.innovation * s.mask / u,
            s.innovation * s.mask / s.innovation_std,
            s.mask,
            jnp.minimum(s.distance / DISTANCE_SCALE, 1.0),
            jnp.clip(0.5 * jnp.log(s.consistency), -3.0, 3.0),
        ],
        axis=-1,
    )


def target(norm: AnchorNormalisation, s: AnchorSummary, truth: jax.Array) -> jax.Array:
    """The training target z = (t − x̄_a)/s_a."""
    return (truth - s.mean_a) / norm.scale(s.spread_a)


# ---------------------------------------------------------------------------- network


@dataclasses.dataclass(frozen=True)
class AnchoredSpec:
    """What an ``ens-diffusion`` checkpoint needs to rebuild its network."""

    n: int
    gnn: GNNConfig
    edm: EDM

    def graph(self):
        return ring_graph(self.n)

    def build(self, key: int | jax.Array = 0) -> GraphNetwork:
        return GraphNetwork(
            1 + N_FEATURES, 1, self.graph(), self.gnn, conditional=True, rngs=nnx.Rngs(key)
        )

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "gnn": dataclasses.asdict(self.gnn),
            "edm": dataclasses.asdict(self.edm),
        }

    @staticmethod
    def from_dict(data: dict) -> AnchoredSpec:
        return AnchoredSpec(int(data["n"]), GNNConfig(**data["gnn"]), EDM(**data["edm"]))


def network_fn(model: GraphNetwork, graph, condition: jax.Array):
    """``net(z_in, c_noise) -> F`` with the conditioning ``(..., n, N_FEATURES)`` bound (the EDM
    ``net``)."""

    def net(z_in: jax.Array, c_noise: jax.Array) -> jax.Array:
        cond = jnp.broadcast_to(condition, z_in.shape + (N_FEATURES,))
        return model(graph, jnp.concatenate([z_in[..., None], cond], axis=-1), c_noise)[..., 0]

    return net


# ---------------------------------------------------------------------------- checkpoint


def save(
    path,
    params,
    spec: AnchoredSpec,
    norm: AnchorNormalisation,
    testbed: dict,
    obs: dict,
    config: dict,
    summary: dict,
) -> None:
    """Write an ``ens-diffusion`` checkpoint (atomically: ``checkpoint.write_checkpoint``)."""
    write_checkpoint(
        Path(path),
        params,
        {
            "format": FORMAT,
            "model": MODEL_KIND,
            "testbed": testbed,
            "spec": spec.to_dict(),
            "normalisation": norm.to_dict(),
            "obs": obs,
            "training": summary,
            "config": config,
        },
    )


@dataclasses.dataclass(frozen=True)
class AnchoredCheckpoint:
    spec: AnchoredSpec
    norm: AnchorNormalisation
    params: Any
    graphdef: Any
    meta: dict


def load(path, testbed: dict | None = None) -> AnchoredCheckpoint:
    """Load an ``ens-diffusion`` checkpoint; with ``testbed`` (``testbed_record``), check it
    was made for it."""
    path = Path(path)
    meta = read_meta(
        path,
        None,
        (
            f"no ens-diffusion checkpoint at {path} (expected meta.json and params.npz); "
            "train one with `ensda train CONFIG` (train.target: anchored)"
        ),
    )
    if meta.get("model") != MODEL_KIND:
        raise CheckpointError(
            f"{path} holds a {meta.get('model', 'diffusion')!r} model, not an ens-diffusion "
            "(LETKF-anchored) one; train it with train.target: anchored"
        )
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: ens-diffusion checkpoint format {meta.get('format')!r}, this ensda reads "
            f"format {FORMAT} (its network has other inputs); retrain it with `ensda train`"
        )
    check_testbed(path, meta, testbed)
    spec = AnchoredSpec.from_dict(meta["spec"])
    graphdef, params = nnx.split(nnx.eval_shape(spec.build))
    return AnchoredCheckpoint(
        spec,
        AnchorNormalisation.from_dict(meta["normalisation"]),
        read_params(path, params),
        graphdef,
        meta,
    )


def affine_coupled(samples: jax.Array, members: jax.Array, spread: str = "model") -> jax.Array:
    """The members' anomalies, standardised per site, scaled to the ``samples``' std and moved
    to their mean: μ̂ + ĉ (x_j − x̄)/std(x) at each site (N, n). The result has the samples'
    mean and spread and exactly the members' anomaly correlations across sites (the linear
    transport a Gaussian model's probability-flow ODE would make of those anomalies).
    ``spread``: ``model`` as above; ``global``: μ̂ + g (x_j − x̄), one gain g for all sites (the
    ratio of the samples' mean variance to the members'), so the anomalies keep their
    structure site by site; ``anchor``: μ̂ + (x_j − x̄), only the mean moves."""
    anomalies = members - members.mean(0)
    if spread == "anchor":
        return samples.mean(0) + anomalies
    if spread == "global":
        gain = jnp.sqrt(
            jnp.mean(samples.var(0, ddof=1))
            / jnp.maximum(jnp.mean(anomalies.var(0, ddof=1)), 1e-24)
        )
        return samples.mean(0) + gain * anomalies
    unit = anomalies / jnp.maximum(anomalies.std(0, ddof=1), 1e-12)
    return samples.mean(0) + samples.std(0, ddof=1) * unit


def copula_coupled(samples: jax.Array, members: jax.Array) -> jax.Array:
    """Ensemble copula coupling (Schefzik, Thorarinsdottir & Gneiting 2013): at each site the
    sorted ``samples`` (N, n) are given to the members in the order of ``members``' ranks there,
    so the result has the samples' marginals and the members' rank dependence across sites."""
    ranks = jnp.argsort(jnp.argsort(members, axis=0), axis=0)
    return jnp.take_along_axis(jnp.sort(samples, axis=0), ranks, axis=0)


# ---------------------------------------------------------------------------- the method


@registry.register
@pytree_dataclass
class AnchoredDiffusionDA:
    name: ClassVar[str] = "ens-diffusion"
    ensemble: ClassVar[bool] = True

    params: Any
    graph: Any
    norm: AnchorNormalisation
    anchor: Anchor
    distance: jax.Array  # (n, n) between sites
    graphdef: Any = static(None, setting=False)
    edm: EDM = static(EDM(), setting=False)
    #: checkpoint directory written by ``ensda train`` with ``train.target: anchored``
    checkpoint: str = static("checkpoints/l96_anchored")
    #: the anchor LETKF: Gaspari–Cohn half-width (sites), prior inflation, RTPS
    anchor_radius: Annotated[float, Field(gt=0, le=1e6)] = static(10.0)
    anchor_inflation: Annotated[float, Field(ge=1.0)] = static(1.02)
    anchor_rtps: Annotated[float, Field(ge=0.0, le=1.0)] = static(0.1)
    sampler: Literal["heun", "dpm2s"] = static("heun")
    steps: Annotated[int, Field(ge=1)] = static(20)
    #: how members relate to the anchor's: ``ecc`` (independent samples in the anchor members'
    #: ranks), ``anchor`` (member j starts from its standardised anchor anomaly), ``independent``
    coupling: Literal["affine", "ecc", "anchor", "independent"] = static("affine")
    #: ``affine`` coupling: the analysis spread is the model's per site (``model``), the anchor's
    #: scaled by one gain to the model's mean spread (``global``), or the anchor's (``anchor``)
    spread: Literal["model", "global", "anchor"] = static("model")
    #: likelihood guidance λ ≥ 0 and γ (``ensda.diffusion.guidance``) with h(x̄_a + s_a D(z, σ))
    guidance_strength: Annotated[float, Field(ge=0)] = static(0.0)
    guidance_gamma: Annotated[float, Field(ge=0)] = static(1.0)

    @classmethod
    def build(cls, ctx, **settings) -> AnchoredDiffusionDA:
        if (
            not hasattr(ctx.testbed.grid, "n")
            or getattr(ctx.testbed.grid, "n_channels", None) is not None
        ):
            raise ValueError(
                "ens-diffusion runs on Lorenz-96 only (the sphere version is not built yet)"
            )
        ck = load(settings["checkpoint"], testbed_record(ctx.testbed))
        trained = ck.meta.get("obs", {})
        network = ctx.network
        here = {"operator": network.operator, "r_std": float(network.r_std)}
        if trained and (
            trained.get("operator") != here["operator"]
            or not np.isclose(trained.get("r_std"), here["r_std"])
        ):
            raise ValueError(
                f"the model was trained for observations {trained}, the network has {here}; "
                "retrain for this operator and error"
            )
        anchor = make_anchor(
            ctx, settings["anchor_radius"], settings["anchor_inflation"], settings["anchor_rtps"]
        )
        return cls(
            params=ck.params,
            graph=ck.spec.graph(),
            norm=ck.norm,
            anchor=anchor,
            distance=site_distances(ctx.testbed.grid),
            graphdef=ck.graphdef,
            edm=ck.spec.edm,
            **settings,
        )

    @property
    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(kind=self.sampler, steps=self.steps)

    @property
    def nfe(self) -> int:
        """Denoiser calls per member and analysis."""
        return nfe(self.sampler_config)

    def denoiser(self, condition: jax.Array):
        return self.edm.denoiser(
            network_fn(nnx.merge(self.graphdef, self.params), self.graph, condition)
        )

    def analyse_with_summary(self, background: jax.Array, obs: Observations, key: jax.Array):
        """The analysis ensemble ``(N, n)`` and the cycle's ``AnchorSummary`` (training data)."""
        k_anchor, k_sample = jax.random.split(key)
        xa = self.anchor.analyse(background, obs, k_anchor)
        summary = summarise(background, xa, obs, self.distance)
        scale = self.norm.scale(summary.spread_a)
        return self.sample(xa, summary, scale, obs, k_sample), summary

    def sample(
        self,
        anchor_members: jax.Array,
        summary: AnchorSummary,
        scale: jax.Array,
        obs: Observations,
        key: jax.Array,
    ) -> jax.Array:
        """Members x̄_a + s_a z_j, z_j from the sampler (module docstring, ``coupling``)."""
        n_members, n = anchor_members.shape
        denoise = self.denoiser(features(self.norm, summary))
        if self.guidance_strength > 0:
            denoise = likelihood_guided(
                denoise,
                lambda z: obs.h(summary.mean_a + scale * z),
                obs.y,
                obs.r_std**2,
                self.guidance_strength,
                self.guidance_gamma,
            )
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n_members))
        # the start at σ_max: ε √(σ_max² + σ_d²), the marginal of unit-variance residuals there
        width = np.sqrt(self.edm.sigma_max**2 + self.edm.sigma_data**2)
        if self.coupling == "anchor":
            eps = (anchor_members - summary.mean_a) / scale
        else:  # antithetic pairs ε, −ε: the sample mean of a near-linear flow carries little noise
            eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (n,)))(keys)
            half = n_members // 2
            eps = eps.at[half : 2 * half].set(-eps[:half])
        z = jax.vmap(lambda k, x: sample(denoise, k, (n,), self.edm, self.sampler_config, x)[0])(
            keys, width * eps
        )
        if self.coupling == "ecc":
            z = copula_coupled(z, anchor_members)
        elif self.coupling == "affine":
            z = affine_coupled(z, (anchor_members - summary.mean_a) / scale, self.spread)
        return summary.mean_a + scale * z

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        return self.analyse_with_summary(background, obs, key)[0]
