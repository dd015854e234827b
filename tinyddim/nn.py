"""Functional neural-network ops for the UNet, on NumPy or CuPy arrays.

Each op is a plain function of arrays; weights come in as `weight`/`bias` keywords so that the UNet
can write `conv2d(h, **p["conv1"], padding=1)` with `p` a branch of the checkpoint's params tree.
Arrays are float32 and NCHW, as in PyTorch. Every op works on any array module
(`xp = get_array_module(x)`); the tests check each against a naive loop.
"""

import math

import numpy as np

from .backend import get_array_module


def linear(x, weight, bias=None):
    """y = x Wᵀ + b over the last axis; `weight` is (out, in) as in torch.nn.Linear."""
    y = x @ weight.T
    return y if bias is None else y + bias


def silu(x):
    """SiLU / swish: x · σ(x)."""
    return x / (1 + get_array_module(x).exp(-x))


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation as torch.nn.Conv2d: x (B, C, H, W), weight (O, C, kh, kw) -> (B, O, H', W').

    `padding` is an int (zeros on all sides) or (top, bottom, left, right).
    Unfolds the k·k shifted views of x into columns (im2col) and does one matrix product.
    """
    xp = get_array_module(x)
    top, bottom, left, right = (padding,) * 4 if isinstance(padding, int) else padding
    if top or bottom or left or right:
        x = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h = (height - kh) // stride + 1
    out_w = (width - kw) // stride + 1
    if kh == kw == 1 and stride == 1:
        cols = x.reshape(batch, channels, height * width)  # (B, C, H, W) -> (B, C, HW)
    else:
        cols = xp.empty((batch, channels, kh, kw, out_h, out_w), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
        cols = cols.reshape(batch, channels * kh * kw, out_h * out_w)  # -> (B, C·kh·kw, H'W')
    y = weight.reshape(out_channels, -1) @ cols  # (O, C·kh·kw) @ (B, C·kh·kw, H'W') -> (B, O, H'W')
    if bias is not None:
        y += bias[:, None]
    return y.reshape(batch, out_channels, out_h, out_w)  # (B, O, H'W') -> (B, O, H', W')


def group_norm(x, weight, bias, num_groups, eps):
    """torch.nn.GroupNorm: normalise each group of C/G channels over (C/G, H, W), then scale and shift."""
    batch, channels = x.shape[:2]
    groups = x.reshape(batch, num_groups, -1)  # (B, C, H, W) -> (B, G, C/G·H·W)
    mean = groups.mean(axis=-1, keepdims=True)
    var = groups.var(axis=-1, keepdims=True)
    normed = ((groups - mean) / get_array_module(x).sqrt(var + eps)).reshape(x.shape)  # -> (B, C, H, W)
    shape = (1, channels) + (1,) * (x.ndim - 2)
    return normed * weight.reshape(shape) + bias.reshape(shape)


def softmax(x, axis=-1):
    """exp(x) / Σ exp(x), shifted by the max for stability."""
    e = get_array_module(x).exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, k, v):
    """Scaled dot-product attention softmax(q kᵀ / √d) v over (..., tokens, d)."""
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return softmax(scores) @ v


def upsample_nearest(x, scale=2):
    """Nearest-neighbour upsampling of (B, C, H, W) by an integer factor."""
    xp = get_array_module(x)
    return xp.repeat(xp.repeat(x, scale, axis=2), scale, axis=3)


def timestep_embedding(timesteps, dim, flip_sin_to_cos, freq_shift, max_period=10000):
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), as diffusers' Timesteps.

    freq_i = exp(−ln(max_period) · i / (dim/2 − freq_shift)),  emb = [sin(t·freq), cos(t·freq)]
    (or [cos, sin] with flip_sin_to_cos). Computed in float32 on the host, like diffusers (the
    frequencies through a float64 exp, which rounds as torch's float32 exp does).
    """
    half = dim // 2
    exponent = -math.log(max_period) * np.arange(half, dtype=np.float32) / np.float32(half - freq_shift)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = np.asarray(timesteps, dtype=np.float32)[:, None] * freqs[None, :]  # (B, 1)·(1, half) -> (B, half)
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb
