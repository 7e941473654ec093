"""``ensda train``: the training workflows of the learned methods, at the experiment layer
(they build OSSEs and cycle methods to make their data).

``train.target`` picks the workflow: ``increment`` (``increment``: the denoiser of method
``diffusion``) or ``anchored`` (``anchored``: the LETKF-anchored residual denoiser of
``ens-diffusion``, with its self-cycled rounds). Both share the optimisation loop
``increment.fit`` and write a checkpoint (``ensda.diffusion.checkpoint``).
"""

from __future__ import annotations

from ensda.training.anchored import train_anchored
from ensda.training.increment import TrainResult, train_increment


def train(cfg, progress=None, report=lambda _: None, log=None) -> TrainResult:
    """Train the model of ``cfg.train`` (``train.target``) and save its checkpoint."""
    if cfg.train is not None and cfg.train.target == "anchored":
        return train_anchored(cfg, progress, report, log)
    return train_increment(cfg, progress, report, log)


__all__ = ["TrainResult", "train", "train_anchored", "train_increment"]
