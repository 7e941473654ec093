"""Config sections of the Lorenz-96 testbed: ``testbed:`` (``kind: lorenz96``, the default)
and ``obs:`` (sites of the ring: every k-th, a random fraction, or a list)."""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from ensda.schema import Strict


class TestbedConfig(Strict):
    kind: Literal["lorenz96"] = "lorenz96"
    n: int = Field(40, ge=4)
    forcing: float = 8.0
    dt: float = Field(0.05, gt=0)
    steps_per_cycle: int = Field(1, ge=1)
    spinup_steps: int = Field(1000, ge=0)
    #: attractor samples (independent of the truth) for climatology, B, initial ensembles
    climatology_samples: int = Field(5000, ge=100)

    def checkpoint_record(self) -> dict:
        """What a trained model is specific to (``ensda.diffusion.checkpoint``)."""
        return checkpoint_record(self)


#: the Lorenz-96 settings a trained model is specific to
CHECKPOINT_FIELDS = ("n", "forcing", "dt", "steps_per_cycle")


def checkpoint_record(testbed) -> dict:
    """The record of a Lorenz-96 testbed (its config or its model) that a checkpoint keeps."""
    return {"kind": "lorenz96"} | {k: getattr(testbed, k) for k in CHECKPOINT_FIELDS}


class ObsConfig(Strict):
    every: int = Field(1, ge=1)
    density: float | None = Field(None, gt=0, le=1)
    sites: list[int] | None = None
    redraw: bool = False
    r_std: float = Field(1.0, gt=0)
    operator: Literal["identity", "square", "abs", "arctan"] = "identity"

    @pydantic.model_validator(mode="after")
    def _one_network(self):
        chosen = [
            n
            for n, on in (
                ("every", self.every != 1),
                ("density", self.density is not None),
                ("sites", self.sites is not None),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"give only one of obs.every, obs.density, obs.sites (got {', '.join(chosen)})"
            )
        if self.redraw and self.density is None:
            raise ValueError("obs.redraw needs obs.density (only random networks are redrawn)")
        return self
