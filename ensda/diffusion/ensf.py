r"""``EnSF``: the training-free ensemble score filter (method ``ensf``; Bao, Zhang & Zhang
2024, "An ensemble score filter for tracking high-dimensional nonlinear dynamical systems",
CMAME, arXiv:2309.00983).

No network: the prior score is that of the background ensemble smoothed by the forward
process. On pseudo-time t ∈ [0, 1],

.. math:: x_t = \alpha_t x_0 + \beta_t \varepsilon, \quad \alpha_t = 1 - t (1 - \varepsilon_\alpha),
          \quad \beta_t^2 = t,

so with x_0 drawn from the N members x_j, p_t is a Gaussian-kernel mixture with the score

.. math:: \nabla \log p_t(x) = \sum_j w_j(x) \frac{\alpha_t x_j - x}{\beta_t^2}, \quad
          w = \mathrm{softmax}_j\Big(-\frac{|x - \alpha_t x_j|^2}{2 \beta_t^2}\Big)

(the softmax in log-space). The posterior score adds the damped likelihood score,

.. math:: S(x, t) = \nabla \log p_t(x) + h(t)\, J_h^\top R^{-1} (y - h(x)), \quad h(t) = (1 - t)^q,

the gradient of log N(y; h(x), R) by ``jax.grad`` through ``obs.h`` (any operator), q the
``damping`` exponent (the paper: q = 1; q = 0: undamped). Each analysis member solves the
reverse SDE

.. math:: dx = [f(t) x - g(t)^2 S(x, t)]\, dt + g(t)\, d\bar W,
          \quad f = \frac{d \log \alpha_t}{dt},
          \quad g^2 = \frac{d \beta_t^2}{dt} - 2 f \beta_t^2,

from x_1 ~ N(0, I) back to t = ``t_end`` (ε) with ``steps`` Euler–Maruyama steps of equal
size (``lax.scan`` over steps, members ``vmap``-ped, member j with key ``fold_in(key, j)``),
and the state at t = ε is the analysis member.

Coordinates: the filter runs on z = (x − x̄_b) / s, the state relative to the background
mean, with s = 1 (``scale: none``; the paper's algorithm, except that the forward process
contracts towards x̄_b instead of 0: the start is N(x̄_b, I) and the likelihood is taken at
x̄_b + z_t) or s = the climatological standard deviation of each
element (``scale: climatology``, from the set-up's climatological samples; needed on the
sphere, whose channels are SI units of very different sizes). A scale that follows the
background spread would shrink the kernels and the SDE noise with it, and the cycled
ensemble collapses. The likelihood score is taken in z (the chain rule brings in s).
Explicit steps are stable while g² h Δt s²/r² < 2 for every observation (Δt = (1 − ε)/K).

With few members the ensemble collapses: the exact score of the kernel mixture carries
every sample to (α_ε times) one background member, plus the last step's noise (std
g √Δt ≈ √Δt per element), and the likelihood, damped and weaker than the prior's 1/β_t²
pull once β_t² < r², mostly chooses which member: a resampling with jitter, whose
unobserved elements are copies of members. A larger ``t_end`` stops the SDE while the
kernels are still √ε wide (a regularised resampling). How far that gets on sparse
Lorenz-96 networks is measured in experiments/README ("ensf").

The analysis uses the background as given; ``inflation`` and ``rtps`` wrap it as every
ensemble method (the paper uses the raw forecast ensemble: inflation 1, rtps 0).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import jax
import jax.numpy as jnp
from pydantic import Field

from ensda.assimilator import register
from ensda.observe import Observations
from ensda.pytree import pytree_dataclass, static


@register
@pytree_dataclass
class EnSF:
    name: ClassVar[str] = "ensf"
    ensemble: ClassVar[bool] = True

    #: Euler–Maruyama steps K of the reverse SDE
    steps: Annotated[int, Field(ge=1)] = static(100)
    #: α at t = 1 (ε_α)
    eps_alpha: Annotated[float, Field(gt=0, le=1)] = static(0.05)
    #: final pseudo-time ε of the reverse SDE
    t_end: Annotated[float, Field(gt=0, lt=1)] = static(1e-3)
    #: exponent q of the likelihood damping h(t) = (1 − t)^q
    damping: Annotated[float, Field(ge=0)] = static(1.0)
    #: per-element scale s of the filter's coordinates: 1 (``none``) or the climatological std
    scale: Literal["none", "climatology"] = static("none")
    #: (n,) climatological std of each element (``scale: climatology``; filled in by ``build``)
    clim_std: jax.Array | None = None

    @classmethod
    def build(cls, ctx, **settings) -> EnSF:
        """``settings`` validated (``assimilator.build``); the scale from ``ctx.climatology``."""
        if settings.get("scale") != "climatology":
            return cls(**settings)
        std = jnp.std(jnp.asarray(ctx.climatology, jnp.float32), axis=0, ddof=1)
        return cls(clim_std=jnp.where(std > 0, std, 1.0), **settings)

    @property
    def nfe(self) -> int:
        """Network calls per member and analysis: none."""
        return 0

    def alpha(self, t: jax.Array) -> jax.Array:
        return 1.0 - t * (1.0 - self.eps_alpha)

    def drift(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(f, g²) at t: f = d log α/dt = −(1 − ε_α)/α_t, g² = 1 − 2 f t."""
        f = -(1.0 - self.eps_alpha) / self.alpha(t)
        return f, 1.0 - 2.0 * f * t

    def prior_score(
        self, z: jax.Array, members: jax.Array, sq_norms: jax.Array, t: jax.Array
    ) -> jax.Array:
        """Score of the kernel mixture of ``members`` (N, n) at z (n,); ``sq_norms`` = |z_j|².
        The softmax drops |z|², the same for every j: logits (α z·z_j − α²|z_j|²/2)/β²."""
        a = self.alpha(t)
        w = jax.nn.softmax((a * (members @ z) - 0.5 * a**2 * sq_norms) / t)
        return (a * (w @ members) - z) / t

    def analyse(self, background: jax.Array, obs: Observations, key: jax.Array) -> jax.Array:
        n_members, n = background.shape
        mean = background.mean(0)
        if self.scale == "climatology":
            if self.clim_std is None:
                raise ValueError(
                    "scale: climatology needs clim_std (build the method with EnSF.build)"
                )
            s = self.clim_std.astype(mean.dtype)
        else:
            s = jnp.ones_like(mean)
        members = (background - mean) / s
        sq_norms = jnp.sum(members**2, axis=-1)

        def log_likelihood(z):
            return -0.5 * jnp.sum(((obs.y - obs.h(mean + s * z)) / obs.r_std) ** 2)

        likelihood_score = jax.grad(log_likelihood)
        dt = (1.0 - self.t_end) / self.steps
        times = 1.0 - dt * jnp.arange(self.steps, dtype=background.dtype)

        def member(k):
            k_start, k_noise = jax.random.split(k)

            def step(z, inputs):
                i, t = inputs
                f, g2 = self.drift(t)
                score = self.prior_score(z, members, sq_norms, t) + (
                    1.0 - t
                ) ** self.damping * likelihood_score(z)
                xi = jax.random.normal(jax.random.fold_in(k_noise, i), z.shape, z.dtype)
                return z - (f * z - g2 * score) * dt + jnp.sqrt(g2 * dt) * xi, None

            z1 = jax.random.normal(k_start, (n,), background.dtype)
            return jax.lax.scan(step, z1, (jnp.arange(self.steps), times))[0]

        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n_members))
        return mean + s * jax.vmap(member)(keys)
