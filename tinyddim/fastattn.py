"""The speed-up of `nn.attention` on the CPU: scaled dot-product attention for many small heads.

The bundled model attends with heads of 8 channels over 64 tokens (its 8x8 level), 8 heads per image: at
batch 64 that is 512 tiny products, and the time goes into the passes over the (heads, tokens, tokens)
scores (max, exp, sum, scale), not into the products. So the scores are made in chunks (of images, or of
heads) that stay in cache (ATTENTION_CHUNK floats), each worked in place, and every pass that can run on a
smaller array does: 1/√d is applied to q (d columns, not tokens²) and the softmax's division to the output
(d_v columns).
The softmax's sums need no pass of their own: v gets a column of ones, so the product e^S [v, 1] gives
the weighted values and, in its last column, each row's Σ_j e^(S_ij).
The usual shift by the row maximum (so that exp cannot overflow) is skipped where Cauchy–Schwarz bounds
every score, |q_i · k_j| ≤ |q_i| |k_j| ≤ 80: then exp lies in [e^−80, e^80], far from float32's limits,
and the unshifted softmax is the same. The heads are not copied out of the tokens: the products read the
strided (B, heads, HW, d) views as they are (the one copy of q is the one that scales it), and the output
is laid out as (B, HW, heads, d_v), so the heads merge back without a copy. `nn.attention` hands off here;
the tests compare the two.
"""

import numpy as np

ATTENTION_CHUNK = 1 << 16  # score floats per chunk (256 KiB)


def attention(q, k, v):
    """softmax(q kᵀ / √d) v over (..., tokens, d), as `nn.attention`, in chunks of the first axis.

    q, k and v may be strided views, such as the UNet's heads ((B, heads, HW, d) views of (B, HW, heads·d)):
    the products read them where they are, and the output keeps q's memory layout, so that merging the heads
    back, out.swapaxes(1, 2).reshape(B, HW, heads·d_v), needs no copy."""
    if q.ndim == 2:  # one head: (N, d)
        return attention(q[None], k[None], v[None])[0]
    queries = q * np.float32(1 / np.sqrt(q.shape[-1]))  # (..., N, d), in q's layout
    d_v = v.shape[-1]
    values = np.empty(v.shape[:-1] + (d_v + 1,), dtype=v.dtype)  # [v, 1]: (..., M, d_v + 1)
    values[..., :d_v] = v
    values[..., d_v] = 1
    weighted = np.empty(q.shape[:-1] + (d_v + 1,), dtype=np.result_type(q, v))  # e^S [v, 1]: (..., N, d_v + 1)
    bounds = _score_bounds(queries, k)
    step = max(1, ATTENTION_CHUNK // (q[0, ..., 0].size * k.shape[-2]))  # items of the first axis per chunk
    for start in range(0, len(q), step):
        part = slice(start, start + step)
        scores = queries[part] @ k[part].swapaxes(-1, -2)  # (n, ..., N, d) @ (n, ..., d, M) -> (n, ..., N, M)
        if bounds[part].max() > 80:
            scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        np.matmul(scores, values[part], out=weighted[part])  # (n, ..., N, M) @ (n, ..., M, d_v + 1): e^S [v, 1]
    out = np.empty_like(q, shape=q.shape[:-1] + (d_v,), dtype=weighted.dtype)  # in q's layout
    np.divide(weighted[..., :d_v], weighted[..., d_v:], out=out)  # the softmax's normalisation, on d_v columns
    return out


def _score_bounds(queries, keys):
    """max_i |q_i| · max_j |k_j| of each head (Cauchy–Schwarz: no score is larger), for (..., N, d) and
    (..., M, d) -> (...)."""
    q_norms = np.einsum("...nd,...nd->...n", queries, queries).max(axis=-1)  # largest |q_i|² per head
    k_norms = np.einsum("...md,...md->...m", keys, keys).max(axis=-1)
    return np.sqrt(q_norms * k_norms)
