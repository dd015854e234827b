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
    y = x.reshape(-1, x.shape[-1]) @ weight.T  # (..., in) -> (N, in) @ (in, out): one matrix product
    if bias is not None:
        y += bias
    return y.reshape(x.shape[:-1] + (weight.shape[0],))  # (N, out) -> (..., out)


def silu(x, inplace=False):
    """SiLU / swish: x · σ(x) = x / (1 + e^(−x)).

    inplace=True overwrites x (a buffer the caller owns), one example at a time, so that no second
    full-size array is ever held.
    """
    xp = get_array_module(x)
    if not inplace:
        out = xp.negative(x)
        xp.exp(out, out=out)
        out += 1
        return xp.divide(x, out, out=out)
    for example in x:  # views into x
        denominator = xp.exp(-example)
        denominator += 1
        example /= denominator
    return x


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation as torch.nn.Conv2d: x (B, C, H, W), weight (O, C, kh, kw) -> (B, O, H', W').

    `padding` is an int (zeros on all sides) or (top, bottom, left, right).
    Unfolds the kh·kw shifted views of x into columns (im2col) and does one matrix product per block of
    output positions: whole images when they fit a small buffer, else bands of rows. Bounding the buffer
    keeps it in cache and keeps memory flat for 256x256 inputs (`conv2d_reference` is the plain version).
    """
    xp = get_array_module(x)
    top, bottom, left, right = (padding,) * 4 if isinstance(padding, int) else padding
    if top or bottom or left or right:
        x = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    kernel = weight.reshape(out_channels, -1)  # (O, C, kh, kw) -> (O, C·kh·kw)
    y = xp.empty((batch, out_channels, out_h * out_w), dtype=x.dtype)
    for images, rows in _blocks(batch, out_h, channels * kh * kw * out_w, _im2col_budget(xp)):
        cols = _im2col(x[images], kh, kw, stride, rows, out_w)  # (n, C·kh·kw, rows·W')
        xp.matmul(kernel, cols, out=y[images, :, rows.start * out_w : rows.stop * out_w])
    if bias is not None:
        y += bias[:, None]
    return y.reshape(batch, out_channels, out_h, out_w)  # (B, O, H'W') -> (B, O, H', W')


def _im2col_budget(xp):
    """Floats in one im2col buffer: a few MB on the CPU (cache-sized); large on a GPU (fewer launches)."""
    return 1 << 20 if xp is np else 1 << 27


def _blocks(batch, out_h, floats_per_row, budget):
    """(images, rows) slices that cover the output, each needing at most ~`budget` im2col floats."""
    rows_per_block = max(1, budget // floats_per_row)
    if rows_per_block >= out_h:  # whole images fit: take several at once
        step = rows_per_block // out_h
        return [(slice(b, min(b + step, batch)), slice(0, out_h)) for b in range(0, batch, step)]
    bands = -(-out_h // rows_per_block)
    rows_per_block = -(-out_h // bands)  # bands of equal height
    return [(slice(b, b + 1), slice(r, min(r + rows_per_block, out_h)))
            for b in range(batch) for r in range(0, out_h, rows_per_block)]


def _im2col(x, kh, kw, stride, rows, out_w):
    """The kh·kw shifted (strided) views of x (n, C, H, W) for output `rows`, as (n, C·kh·kw, rows·W')."""
    n, channels = x.shape[:2]
    count = rows.stop - rows.start
    if kh == kw == 1 and stride == 1:
        return x[:, :, rows].reshape(n, channels, count * out_w)  # (n, C, rows, W) -> (n, C, rows·W)
    cols = get_array_module(x).empty((n, channels, kh, kw, count, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            top = rows.start * stride + i
            cols[:, :, i, j] = x[:, :, top : top + stride * count : stride, j : j + stride * out_w : stride]
    return cols.reshape(n, channels * kh * kw, count * out_w)  # (n, C, kh, kw, rows, W') -> (n, C·kh·kw, rows·W')


def conv2d_reference(x, weight, bias=None, stride=1, padding=0):
    """The plain version of `conv2d`: one im2col of the whole batch, one matrix product."""
    xp = get_array_module(x)
    top, bottom, left, right = (padding,) * 4 if isinstance(padding, int) else padding
    x = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    cols = _im2col(x, kh, kw, stride, slice(0, out_h), out_w)
    y = weight.reshape(out_channels, -1) @ cols  # (O, C·kh·kw) @ (B, C·kh·kw, H'W') -> (B, O, H'W')
    if bias is not None:
        y = y + bias[:, None]
    return y.reshape(x.shape[0], out_channels, out_h, out_w)


def group_norm(x, weight, bias, num_groups, eps):
    """torch.nn.GroupNorm: normalise each group of C/G channels over (C/G, H, W), then scale and shift.

    y = (x − μ_g) · γ_c / √(σ²_g + ε) + β_c, with the per-channel factor γ_c / √(σ²_g + ε) applied in
    place on the centred copy (few passes over the data).
    """
    xp = get_array_module(x)
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
