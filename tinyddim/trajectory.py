"""A sampling run's trajectory: every x_t, x̂_0 and ε_θ on the way from x_T to x_0, on the host."""

from dataclasses import dataclass, field

import numpy as np

from .backend import to_numpy


@dataclass
class Trajectory:
    """timesteps (S,); x_t (S + 1, B, C, H, W) starting with x_T; x0_pred and eps (S, B, C, H, W)."""

    timesteps: np.ndarray
    x_t: list = field(default_factory=list)
    x0_pred: list = field(default_factory=list)
    eps: list = field(default_factory=list)

    def record(self, x_t=None, x0_pred=None, eps=None):
        """Keep host copies of the arrays given (x_T first, then each step's x_prev, x̂_0, ε)."""
        for name, value in (("x_t", x_t), ("x0_pred", x0_pred), ("eps", eps)):
            if value is not None:
                getattr(self, name).append(to_numpy(value))

    def stacked(self):
        """This trajectory with each list stacked into one array: (S + 1, B, ...) or (S, B, ...)."""
        return Trajectory(np.asarray(self.timesteps), np.stack(self.x_t), np.stack(self.x0_pred),
                          np.stack(self.eps))
