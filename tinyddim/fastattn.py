"""The speed-up of attention on the CPU: the UNet's self-attention with the channels first, for many small heads.

The bundled model attends with heads of 8 channels over 64 tokens (its 8x8 level), 8 heads per image: at
batch 64 that is 512 tiny products, and the time goes into the passes over the (heads, tokens, tokens)
scores and over arrays laid out in runs of 8 floats, not into the products. So nothing here is laid out
by token:

    the projections     W @ h over the channels of h (B, C, HW), as a 1x1 conv: q, k and v come out as
                        (B, heads, d, HW), each head's channels as rows, with no token copy in or out;
                        q, k and [v; 1] are one product, 1/√d folded into W_q and b_q, and each head's row
                        of ones made by a zero weight row with bias 1
    the scores          made transposed, Sᵀ = kᵀ q (keys as rows), in chunks of images (or heads) that stay
                        in cache (ATTENTION_CHUNK floats), exp'd in place
    the softmax's sums  [v; 1] e^(Sᵀ): the weighted values and, in the last row, each query's Σ_j e^(S_ij);
                        the division then runs along rows of HW tokens
    the output          W_o @ out over the channels again: (B, C, HW) is the conv layout the UNet goes on in

The usual shift by the row maximum (so that exp cannot overflow) is skipped where Cauchy–Schwarz bounds
every score, |q_i · k_j| ≤ |q_i| |k_j| ≤ 80: then exp lies in [e^−80, e^80], far from float32's limits,
and the unshifted softmax is the same. `nn.self_attention` and `nn.attention` hand off here; the tests
compare each with its plain op.
"""

import numpy as np

ATTENTION_CHUNK = 1 << 16  # score floats per chunk (256 KiB)


def self_attention(h, heads, to_q, to_k, to_v, to_out):
    """`nn.self_attention` of h (B, C, H, W) with the channels first: the projections are products over the
    channels, the attention runs on (B, heads, d, HW), and the output is (B, C, H, W) again."""
    batch, channels = h.shape[:2]
    x = h.reshape(batch, channels, -1)  # (B, C, H, W) -> (B, C, HW): the tokens as columns
    weight, bias = _stacked_projections(heads, to_q, to_k, to_v)
    qkv = weight @ x  # (2C + heads·(d+1), C) @ (B, C, HW) -> (B, 2C + heads·(d+1), HW)
    qkv += bias[:, None]
    q, k = (qkv[:, i * channels : (i + 1) * channels].reshape(batch, heads, -1, x.shape[-1]) for i in range(2))
    values = qkv[:, 2 * channels :].reshape(batch, heads, -1, x.shape[-1])  # [v; 1]: (B, heads, d+1, HW)
    out = attention_channels_first(q, k, values).reshape(batch, channels, -1)  # (B, heads, d, HW) -> (B, C, HW)
    y = to_out["weight"] @ out  # (C, C) @ (B, C, HW)
    if to_out.get("bias") is not None:
        y += to_out["bias"][:, None]
    return y.reshape(h.shape)


def _stacked_projections(heads, to_q, to_k, to_v):
    """The weight and bias of q, k and [v; 1] as one product: the rows of W_q/√d, of W_k, then per head its
    rows of W_v and a zero row with bias 1, which makes that head's row of ones."""
    channels, inputs = to_q["weight"].shape
    d = channels // heads
    scale = np.float32(1 / np.sqrt(d))
    weight = np.zeros((2 * channels + heads * (d + 1), inputs), dtype=to_q["weight"].dtype)
    bias = np.zeros(len(weight), dtype=weight.dtype)
    v_rows = weight[2 * channels :].reshape(heads, d + 1, inputs)  # views: per head, d rows of W_v, a zero row
    v_bias = bias[2 * channels :].reshape(heads, d + 1)
    weight[:channels] = to_q["weight"] * scale
    weight[channels : 2 * channels] = to_k["weight"]
    v_rows[:, :d] = to_v["weight"].reshape(heads, d, inputs)
    for target, p, factor in ((bias[:channels], to_q, scale), (bias[channels : 2 * channels], to_k, 1),
                              (v_bias[:, :d], to_v, 1)):
        if p.get("bias") is not None:
            target[...] = (p["bias"] * factor).reshape(target.shape)
    v_bias[:, d] = 1
    return weight, bias


def attention(q, k, v):
    """softmax(q kᵀ / √d) v over (..., tokens, d), as `nn.attention`: `attention_channels_first` of the
    transposed views, with [v; 1] made by one copy."""
    if q.ndim == 2:  # one head: (N, d)
        return attention(q[None], k[None], v[None])[0]
    queries = q.swapaxes(-1, -2) * np.float32(1 / np.sqrt(q.shape[-1]))  # (..., d, N)
    values = np.ones(v.shape[:-2] + (v.shape[-1] + 1, v.shape[-2]), dtype=v.dtype)  # [v; 1]: (..., d_v + 1, M)
    values[..., :-1, :] = v.swapaxes(-1, -2)
    return attention_channels_first(queries, k.swapaxes(-1, -2), values).swapaxes(-1, -2)


def attention_channels_first(q, k, values):
    """softmax(qᵀ k) as weights of v, channels first: q (..., d, N) already scaled by 1/√d, k (..., d, M) and
    values = [v; 1] (..., d_v + 1, M) -> (..., d_v, N), in chunks of the first axis:

        e^(Sᵀ) = exp(kᵀ q)  (..., M, N),   [v; 1] e^(Sᵀ) = [Σ_j e^(S_ij) v_j ; Σ_j e^(S_ij)]  (..., d_v + 1, N)"""
    d_v = values.shape[-2] - 1
    weighted = np.empty(q.shape[:-2] + (d_v + 1, q.shape[-1]), dtype=np.result_type(q, values))
    bounds = _score_bounds(q, k)
    step = max(1, ATTENTION_CHUNK // (q[0, ..., 0, :].size * k.shape[-1]))  # items of the first axis per chunk
    for start in range(0, len(q), step):
        part = slice(start, start + step)
        scores = k[part].swapaxes(-1, -2) @ q[part]  # (n, ..., M, d) @ (n, ..., d, N) -> (n, ..., M, N): Sᵀ
        if bounds[part].max() > 80:
            scores -= scores.max(axis=-2, keepdims=True)  # each query's largest score
        np.exp(scores, out=scores)
        np.matmul(values[part], scores, out=weighted[part])  # (n, ..., d_v + 1, M) @ (n, ..., M, N)
    return weighted[..., :d_v, :] / weighted[..., d_v:, :]  # the softmax's normalisation, along rows of N


def _score_bounds(q, k):
    """max_i |q_i| · max_j |k_j| of each head (Cauchy–Schwarz: no score is larger), for (..., d, N) and
    (..., d, M) -> (...)."""
    return np.sqrt(np.square(q).sum(axis=-2).max(axis=-1) * np.square(k).sum(axis=-2).max(axis=-1))
