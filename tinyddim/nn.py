"""The UNet's ops as plain functions of NumPy or CuPy arrays, each a few lines, in the checkpoint's terms.

Weights come in as `weight`/`bias` keywords, so the UNet writes `conv2d(h, **p["conv1"], padding=1)` with
`p` a branch of the checkpoint's params tree. Arrays are float32 and NCHW, as in PyTorch; every op works on
any array module (`xp = get_array_module(x)`), and the tests check each against a naive loop.

Speed-ups live beside these in `fastops.py` (blocked im2col, upsampling by parity, in-place SiLU, group
norm in chunks, with the Winograd 3x3 conv in `winograd.py`) and `fastattn.py` (many small attention heads,
channels first): `conv2d`, `upsample_conv`, `silu`, `group_norm`, `attention` and `self_attention` hand off
to them in one visible line, and the tests check the fast ops against the plain ones here.
"""

import math

import numpy as np

from . import fastattn, fastops
from .backend import get_array_module


def linear(x, weight, bias=None):
    """y = x Wᵀ + b over the last axis; `weight` is (out, in) as in torch.nn.Linear."""
    y = x.reshape(-1, x.shape[-1]) @ weight.T  # (..., in) -> (N, in) @ (in, out): one matrix product
    if bias is not None:
        y += bias
    return y.reshape(x.shape[:-1] + (weight.shape[0],))  # (N, out) -> (..., out)


def silu(x, inplace=False):
    """SiLU / swish: x · σ(x) = x / (1 + e^(−x)). inplace=True overwrites x (a buffer the caller owns)."""
    if inplace:
        return fastops.silu_inplace(x)  # the same values, without a second full-size array
    return x / (1 + get_array_module(x).exp(-x))


def pad2d(x, padding):
    """Zeros around (B, C, H, W): `padding` is an int (all sides) or (top, bottom, left, right)."""
    top, bottom, left, right = (padding,) * 4 if isinstance(padding, int) else padding
    return get_array_module(x).pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def im2col(x, kh, kw, stride=1):
    """The kh·kw shifted (strided) views of x (B, C, H, W) as columns (C·kh·kw, B·H'·W'): column p holds
    the C·kh·kw inputs that output position p sees, so a convolution becomes one matrix product."""
    batch, channels, height, width = x.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    cols = get_array_module(x).empty((channels, kh, kw, batch, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            view = x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]  # (B, C, H', W')
            cols[:, i, j] = view.transpose(1, 0, 2, 3)  # (B, C, H', W') -> (C, B, H', W')
    return cols.reshape(channels * kh * kw, batch * out_h * out_w)  # (C, kh, kw, B, H', W') -> (C·kh·kw, B·H'W')


def conv2d(x, weight, bias=None, stride=1, padding=0, fast=True):
    """2-D cross-correlation as torch.nn.Conv2d: x (B, C, H, W), weight (O, C, kh, kw) -> (B, O, H', W').

    y[b, o, p] = Σ_{c, i, j} W[o, c, i, j] · x[b, c, p + (i, j)] + bias[o]: the im2col product below.
    `padding` is an int (zeros on all sides) or (top, bottom, left, right). fast=False always runs it.
    """
    if fast and fastops.applies(x, weight, stride):
        return fastops.conv2d(x, weight, bias, stride, padding)  # blocks, Winograd: tinyddim/fastops.py
    x = pad2d(x, padding)
    batch, _, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    y = weight.reshape(out_channels, -1) @ im2col(x, kh, kw, stride)  # (O, C·kh·kw) @ (C·kh·kw, B·H'W') -> (O, B·H'W')
    y = y.reshape(out_channels, batch, out_h, out_w).transpose(1, 0, 2, 3)  # (O, B, H', W') -> (B, O, H', W')
    if bias is not None:
        y = y + bias[:, None, None]
    return y


def group_norm(x, weight, bias, num_groups, eps, fast=True):
    """torch.nn.GroupNorm: normalise each group of C/G channels over (C/G, H, W), then scale and shift.

    y = (x − μ_g) · γ_c / √(σ²_g + ε) + β_c, with the per-channel factor γ_c / √(σ²_g + ε) applied in
    place on the centred copy (few passes over the data). fast=False always runs it.
    """
    xp = get_array_module(x)
    if fast and xp is np:  # the sums as BLAS products, in chunks over the CPU threads
        return fastops.group_norm(x, weight, bias, num_groups, eps)  # tinyddim/fastops.py
    batch, channels = x.shape[:2]
    groups = x.reshape(batch, num_groups, -1)  # (B, C, H, W) -> (B, G, C/G·H·W)
    centered = groups - groups.mean(axis=-1, keepdims=True)
    var = xp.einsum("bgi,bgi->bg", centered, centered) / centered.shape[-1]  # (B, G)
    scale = weight.reshape(num_groups, -1) / xp.sqrt(var + eps)[:, :, None]  # (B, G, C/G)
    out = centered.reshape(batch, channels, -1)  # (B, G, C/G·HW) -> (B, C, HW)
    out *= scale.reshape(batch, channels, 1)
    out += bias[:, None]
    return out.reshape(x.shape)


def softmax(x, axis=-1):
    """exp(x) / Σ exp(x), shifted by the max for stability."""
    e = get_array_module(x).exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q, k, v, fast=True):
    """Scaled dot-product attention softmax(q kᵀ / √d) v over (..., tokens, d). fast=False always runs it."""
    if fast and get_array_module(q) is np:
        return fastattn.attention(q, k, v)  # channels first, the softmax in place: tinyddim/fastattn.py
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return softmax(scores) @ v


def self_attention(h, heads, to_q, to_k, to_v, to_out, fast=True):
    """diffusers' Attention over the H·W positions of h (B, C, H, W) as tokens, in `heads` heads of C/heads
    channels: q, k, v are linear maps of the tokens, each head attends (`attention`), the heads are merged and
    mapped by to_out. Each `to_*` is a {"weight", "bias"} branch of the params tree. fast=False always runs it."""
    if fast and get_array_module(h) is np:
        return fastattn.self_attention(h, heads, to_q, to_k, to_v, to_out)  # channels first: tinyddim/fastattn.py
    batch, channels, height, width = h.shape
    tokens = h.reshape(batch, channels, height * width).swapaxes(1, 2)  # (B, C, H, W) -> (B, HW, C)

    def split_heads(y):
        return y.reshape(batch, -1, heads, channels // heads).swapaxes(1, 2)  # (B, HW, C) -> (B, heads, HW, d)

    q, k, v = (split_heads(linear(tokens, **p)) for p in (to_q, to_k, to_v))
    out = attention(q, k, v, fast=fast).swapaxes(1, 2).reshape(batch, -1, channels)  # -> (B, HW, C)
    out = linear(out, **to_out)
    return out.swapaxes(1, 2).reshape(batch, channels, height, width)  # (B, HW, C) -> (B, C, H, W)


def upsample_nearest(x, scale=2):
    """Nearest-neighbour upsampling of (B, C, H, W) by an integer factor."""
    xp = get_array_module(x)
    return xp.repeat(xp.repeat(x, scale, axis=2), scale, axis=3)


def upsample_conv(x, weight, bias=None, fast=True):
    """diffusers' Upsample2D: nearest-neighbour x2, then a 3x3 conv with padding 1. fast=False always runs it."""
    if fast and get_array_module(x) is np and weight.shape[2:] == (3, 3):
        return fastops.upsample_conv(x, weight, bias)  # four 2x2 convs of x: tinyddim/fastops.py
    return conv2d(upsample_nearest(x), weight, bias, padding=1, fast=fast)


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
