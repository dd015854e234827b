"""The exact ε of a finite data set: a known truth, so a sampler's own error can be measured apart from a network's.

If the data are N points x^(1) … x^(N), each drawn with probability 1/N, the forward process (DDPM Eq. 4)
makes x_t a mixture of N Gaussians, N(x_t; √ᾱ_t x^(n), (1 − ᾱ_t) I). Bayes' rule gives the posterior over
which point x_t came from, a softmax of the Gaussian log-likelihoods (the ‖x_t‖² term is the same for all n):

    w_n(x_t) = softmax_n( −‖x_t − √ᾱ_t x^(n)‖² / (2 (1 − ᾱ_t)) )
    E[x_0 | x_t] = Σ_n w_n x^(n)
    E[ε | x_t]   = (x_t − √ᾱ_t · E[x_0 | x_t]) / √(1 − ᾱ_t)           (from x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε)

E[ε | x_t] minimises the training loss E‖ε − ε_θ(x_t, t)‖² (DDPM's L_simple) over all functions, so it is
the network a perfect training run would give for these data. Sampled with it, DDIM (any η) lands
on the data points once the steps are fine enough; the error left at a few steps is the sampler's alone.

    model = ExactEps(x0_data, scheduler.alpha_bar)       # x0_data (N, C, H, W) in [−1, 1]
    pipe = DDIMPipeline(model, scheduler)                 # callable like a UNet: model(x_t, t)
"""

import math

import numpy as np

from .weights import unet_config


class ExactEps:
    """ε*(x_t, t) = E[ε | x_t] for x_0 uniform over the rows of `data` (N, C, H, W); `alpha_bar` (T,) the ᾱ_t table.

    It has what the pipelines use of a UNet: `model(x_t, t)` for x_t (B, C, H, W) and one timestep t,
    `.sample_shape`, `.device` ("cpu") and `.config` (channels and size). Sums over the data run in float64;
    ε is returned in float32, like a UNet's, so near ᾱ_t = 0 Eq. 9 magnifies its rounding (by 1/√ᾱ_t).
    """

    def __init__(self, data, alpha_bar):
        data = np.asarray(data)
        if data.ndim != 4 or len(data) == 0:
            raise ValueError(f"data must be a non-empty array (N, C, H, W), got shape {data.shape}")
        if not np.isfinite(data).all():
            raise ValueError("data contain NaN or infinite values")
        self.data = data.reshape(len(data), -1).astype(np.float64)           # (N, C·H·W)
        self.data_sq = (self.data**2).sum(1)                                  # (N,) ‖x^(n)‖²
        self.alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
        self.sample_shape = tuple(data.shape[1:])
        channels, height, width = self.sample_shape
        self.config = unet_config({"in_channels": channels, "out_channels": channels,
                                   "sample_size": height if height == width else (height, width),
                                   "block_out_channels": (32,), "down_block_types": ("DownBlock2D",),
                                   "up_block_types": ("UpBlock2D",)})
        self.device = "cpu"

    def _alpha_bar(self, t):
        if isinstance(t, (bool, np.bool_)) or np.ndim(t) != 0 or not float(t).is_integer():
            raise TypeError(f"ExactEps takes one integer timestep for the batch, got {t!r}")
        t = int(t)
        if not 0 <= t < len(self.alpha_bar):
            raise ValueError(f"timestep {t} is outside 0 … {len(self.alpha_bar) - 1}")
        return float(self.alpha_bar[t])

    def _flat(self, x_t):
        x_t = np.asarray(x_t)
        if x_t.ndim != 4 or tuple(x_t.shape[1:]) != self.sample_shape:
            raise ValueError(f"x_t must be (B, {', '.join(map(str, self.sample_shape))}), got shape {x_t.shape}")
        return x_t.reshape(len(x_t), -1).astype(np.float64)                   # (B, C·H·W)

    def posterior(self, x_t, t):
        """w (B, N): the probability that x_t came from each data point, softmax of the log-likelihoods."""
        a = self._alpha_bar(t)
        x = self._flat(x_t)
        # −‖x_t − √ᾱ x^(n)‖² / (2(1 − ᾱ)) without the ‖x_t‖² term, which does not depend on n
        logits = (2 * math.sqrt(a) * (x @ self.data.T) - a * self.data_sq) / (2 * (1 - a))   # (B, N)
        logits -= logits.max(1, keepdims=True)
        w = np.exp(logits)
        return w / w.sum(1, keepdims=True)

    def x0_mean(self, x_t, t):
        """E[x_0 | x_t] (B, C, H, W), float32: the posterior mean of the data."""
        mean = self.posterior(x_t, t) @ self.data                            # (B, C·H·W)
        return mean.reshape((len(mean),) + self.sample_shape).astype(np.float32)

    def __call__(self, x_t, t):
        """E[ε | x_t] = (x_t − √ᾱ_t E[x_0 | x_t]) / √(1 − ᾱ_t), (B, C, H, W) float32."""
        a = self._alpha_bar(t)
        x = self._flat(x_t)
        eps = (x - math.sqrt(a) * (self.posterior(x_t, t) @ self.data)) / math.sqrt(1 - a)   # (B, C·H·W)
        return eps.reshape((len(eps),) + self.sample_shape).astype(np.float32)


def nearest_rmse(samples, data):
    """(B,) RMSE from each sample to its nearest data point; samples (B, ...) and data (N, ...) on one scale."""
    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)     # (B, D)
    y = np.asarray(data, dtype=np.float64).reshape(len(data), -1)           # (N, D)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples have {x.shape[1]} values each, data {y.shape[1]}")
    squared = (x**2).sum(1)[:, None] - 2 * x @ y.T + (y**2).sum(1)[None]    # (B, N) ‖x_b − y_n‖²
    return np.sqrt(np.maximum(squared.min(1), 0) / x.shape[1])
