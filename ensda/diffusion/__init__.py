"""Diffusion models for data assimilation (DiffDA-style), network-independent core.

- ``edm``: EDM preconditioning, training noise and loss, the ρ noise schedule, and the
  exact denoiser of a Gaussian prior (the validation reference).
- ``samplers``: Heun (EDM) and DPM-Solver++(2S) with optional churn; NFE counted.
- ``guidance``: likelihood guidance (DPS / score-based DA) as a denoiser wrapper.
- ``repaint``: RePaint inpainting with a soft mask and resampling jumps.

A denoiser is a pure function ``D(z, sigma) -> x0_hat`` for one sample; callers ``vmap``
over ensemble members with keys ``jax.random.fold_in(key, member)``.
"""

from ensda.diffusion.edm import EDM, Denoiser, Network, gaussian_denoiser
from ensda.diffusion.guidance import likelihood_guided
from ensda.diffusion.repaint import repaint_nfe, repaint_sample, soft_mask
from ensda.diffusion.samplers import SamplerConfig, nfe, sample

__all__ = [
    "EDM",
    "Denoiser",
    "Network",
    "SamplerConfig",
    "gaussian_denoiser",
    "likelihood_guided",
    "nfe",
    "repaint_nfe",
    "repaint_sample",
    "sample",
    "soft_mask",
]
