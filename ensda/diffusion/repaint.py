r"""RePaint inpainting (Lugmayr et al. 2022) in the EDM σ form, with a soft mask.

The known part is imposed after every sampler step σ_i → σ_{i+1} by replacing it with
a fresh draw of its forward (noising) marginal:

.. math:: z \leftarrow m \odot (x_\text{known} + \sigma_{i+1} \varepsilon) + (1 - m) \odot z,

m ∈ [0, 1] the (soft) mask. Resampling (RePaint's "jumps"): the step is done ``jumps``
times in all; between two tries the state is re-noised back to σ_i,
z ← z + sqrt(σ_i² − σ_{i+1}²) ε, so that the unknown part can harmonise with the known
one. With a hard mask the known part is exact at the end (σ_N = 0). The sampler step
is that of ``samplers.step`` (Heun or DPM-Solver++(2S), churn included), so
NFE = jumps · (2N − 1).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from ensda.diffusion.edm import EDM, Denoiser
from ensda.diffusion.samplers import SamplerConfig, nfe, step


def repaint_nfe(config: SamplerConfig, jumps: int = 1) -> int:
    """Denoiser calls per RePaint sample: jumps · (2N − 1)."""
    return jumps * nfe(config)


def soft_mask(distances_to_nearest_obs, width) -> jax.Array:
    """Gaussian mask m = exp(−d² / (2 w²)) of the distance d to the nearest observation.

    ``width`` w = 0 gives the hard mask m = 1 where d = 0, else 0.
    """
    d = jnp.asarray(distances_to_nearest_obs, jnp.float32)
    hard = (d == 0).astype(jnp.float32)
    if not isinstance(width, jax.core.Tracer):
        if not float(width) >= 0:
            raise ValueError(f"soft_mask: width must be >= 0, got {width}")
        if float(width) == 0:
            return hard
        return jnp.exp(-jnp.square(d) / (2.0 * float(width) ** 2))
    safe = jnp.where(width > 0, width, 1.0)
    return jnp.where(width > 0, jnp.exp(-jnp.square(d) / (2.0 * safe**2)), hard)


def repaint_sample(
    denoiser: Denoiser,
    key: jax.Array,
    known: jax.Array,
    mask: jax.Array,
    edm: EDM,
    config: SamplerConfig,
    jumps: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """One RePaint sample; returns ``(x0, nfe_count)`` (count as in ``samplers.sample``).

    known: values of the known part (any shape; ignored where mask = 0); mask: same
    shape, in [0, 1]; jumps >= 1 tries per step (1 = no resampling).
    """
    known = jnp.asarray(known, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if mask.shape != known.shape:
        raise ValueError(
            f"repaint_sample: mask shape {mask.shape} does not match known shape {known.shape}"
        )
    if not (isinstance(jumps, numbers.Integral) and jumps >= 1):
        raise ValueError(f"repaint_sample: jumps must be an int >= 1, got {jumps!r}")
    shape = known.shape
    sig = edm.sigmas(config.steps)
    init_key, noise_key = jax.random.split(key)

    def try_step(z, count, sigma, sigma_next, k, final):
        step_key, known_key = jax.random.split(k)
        x, count = step(denoiser, z, count, sigma, sigma_next, step_key, config, final)
        eps = jax.random.normal(known_key, shape, jnp.float32)
        return mask * (known + sigma_next * eps) + (1.0 - mask) * x, count

    def step_with_jumps(z, count, i, final):
        sigma, sigma_next = sig[i], sig[i + 1]
        step_key = jax.random.fold_in(noise_key, i)
        back = jnp.sqrt(sigma**2 - sigma_next**2)

        def jump(carry, j):
            z, count = carry
            k = jax.random.fold_in(step_key, j)
            z, count = try_step(z, count, sigma, sigma_next, jax.random.fold_in(k, 0), final)
            z = z + back * jax.random.normal(jax.random.fold_in(k, 1), shape, jnp.float32)
            return (z, count), None

        (z, count), _ = jax.lax.scan(jump, (z, count), jnp.arange(jumps - 1))
        k = jax.random.fold_in(jax.random.fold_in(step_key, jumps - 1), 0)
        return try_step(z, count, sigma, sigma_next, k, final)

    z = mask * known + edm.sigma_max * jax.random.normal(init_key, shape, jnp.float32)
    count = jnp.zeros((), jnp.int32)

    def body(carry, i):
        return step_with_jumps(*carry, i, False), None

    (z, count), _ = jax.lax.scan(body, (z, count), jnp.arange(config.steps - 1))
    return step_with_jumps(z, count, config.steps - 1, True)
