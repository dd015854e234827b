"""The speed-ups of `nn.py`: the same ops, computed faster on the CPU; each tested against its plain op.

`nn.conv2d`, `nn.upsample_conv`, `nn.silu` and `nn.group_norm` hand off to this module in one line when it
applies (conv2d: `applies`, on the CPU always, on a GPU when one im2col buffer would be too large; the others
on the CPU). What each trick buys:

    blocked im2col      the im2col product in blocks of output positions that fit a few MB: the buffer
                        stays in cache and memory stays flat at 256x256; several small images in one wide
                        product (the 8x8 and 4x4 levels); 1x1 convs are one product per image, no copy
    _conv_few_outputs   kh·kw·O ≤ C (conv_out to 1 or 3 channels): one product applies every tap, then
                        kh·kw shifted adds (10x at batch 8 on the cifar10 layout, 5x at 256x256)
    Winograd            3x3, stride 1, 16+ channels: Winograd F(2x2, 3x3), 16 products per 2x2 output block
                        instead of 36 (the bulk of the UNet's FLOPs), in its own file, `winograd.py`
    upsample_conv       nearest x2 then a 3x3 conv as four 2x2 convs of the small image, one per output
                        parity: 4 taps per output instead of 9, no upsampled copy (0.5–0.8 of the time)
    silu_inplace        SiLU over a buffer the caller owns, in cache-sized chunks: no second full-size array
    group_norm          its formula on chunks of whole groups, the sums as BLAS products (faster than NumPy's
                        reductions), the chunks shared out over the threads

The blocks of a conv, and the chunks of SiLU and group_norm, are shared out over the CPU threads where the
op does not already run in one slice of a batch (`parallel.shared_out`): one 256x256 image uses every core.
Attention's speed-up is in `fastattn.py`. `benchmarks/profile_forward.py` shows the time of each piece;
`benchmarks/README.md` the measured speed.
"""

import numpy as np

from . import winograd
from .backend import get_array_module
from .parallel import blocks, shared_out


def applies(x, weight, stride=1):
    """Whether `nn.conv2d` hands off here: on the CPU always; on a GPU when the plain im2col buffer
    (C·kh·kw by B·H'·W' floats) would exceed the GPU block budget."""
    xp = get_array_module(x)
    if xp is np:
        return True
    batch, _, height, width = x.shape
    return weight[0].size * batch * (height // stride) * (width // stride) > _im2col_budget(xp)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """`nn.conv2d`, fast: Winograd for 3x3 convs on the CPU, multiply-then-shift for few output channels,
    else the im2col product in cache-sized blocks of output positions (whole images, or bands of rows)."""
    xp = get_array_module(x)
    if xp is np and winograd.applies(x, weight, stride, padding):
        return winograd.conv3x3_winograd(x, weight, bias)  # tinyddim/winograd.py
    out_channels, _, kh, kw = weight.shape
    if xp is np and _downsample_applies(x, weight, stride, padding):
        columns = _downsample_im2col  # its columns cut from parity grids: no padded copy of x
        batch, channels, height, width = x.shape[0], x.shape[1], x.shape[2] + 2, x.shape[3] + 2  # as if padded
    else:
        top, bottom, left, right = (padding,) * 4 if isinstance(padding, int) else padding
        if top or bottom or left or right:
            x = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        columns = _im2col
        batch, channels, height, width = x.shape
    if stride == 1 and 1 < kh * kw and kh * kw * out_channels <= channels:
        return _conv_few_outputs(x, weight, bias)
    if stride == 1 and kh == kw == 1:  # a 1x1 conv: one product per image, straight from x, no copy
        y = weight.reshape(out_channels, channels) @ x.reshape(batch, channels, height * width)  # (B, O, HW)
        if bias is not None:
            y += bias[:, None]
        return y.reshape(batch, out_channels, height, width)
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    kernel = weight.reshape(out_channels, -1)  # (O, C, kh, kw) -> (O, C·kh·kw)
    y = xp.empty((batch, out_channels, out_h * out_w), dtype=x.dtype)

    def block(images_rows):
        images, rows = images_rows
        cols, width = columns(x[images], kh, kw, stride, rows, out_w)  # (C·kh·kw, n·rows·width), width ≥ W'
        target = y[images, :, rows.start * out_w : rows.stop * out_w]  # (n, O, rows·W') view
        if len(target) == 1 and width == out_w:
            xp.matmul(kernel, cols, out=target[0])
        else:  # several small images in one product, the columns past W' dropped: (O, n, rows, W') -> (n, O, rows, W')
            product = (kernel @ cols).reshape(out_channels, len(target), rows.stop - rows.start, width)
            target.reshape(product.shape[1], out_channels, -1, out_w)[...] = product[..., :out_w].transpose(1, 0, 2, 3)

    parts = blocks(batch, out_h, channels * kh * kw * out_w, _im2col_budget(xp))
    if xp is np:
        shared_out(block, parts)  # one large image: its bands over the threads (tinyddim/parallel.py)
    else:
        for images_rows in parts:
            block(images_rows)
    if bias is not None:
        y += bias[:, None]
    return y.reshape(batch, out_channels, out_h, out_w)  # (B, O, H'W') -> (B, O, H', W')


def _im2col_budget(xp):
    """Floats in one im2col buffer: a few MB on the CPU (cache-sized); large on a GPU (fewer launches)."""
    return 1 << 20 if xp is np else 1 << 27


def _im2col(x, kh, kw, stride, rows, out_w):
    """The kh·kw shifted (strided) views of x (n, C, H, W) for output `rows`, as columns (C·kh·kw, n·rows·W'):
    one matrix product then covers all n images (a wide product, even for 4x4 images). Returns them and
    the width of an output row in them, W'."""
    n, channels = x.shape[:2]
    count = rows.stop - rows.start
    cols = get_array_module(x).empty((channels, kh, kw, n, count, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            top = rows.start * stride + i
            view = x[:, :, top : top + stride * count : stride, j : j + stride * out_w : stride]
            cols[:, i, j] = view.transpose(1, 0, 2, 3)  # (n, C, rows, W') -> (C, n, rows, W')
    return cols.reshape(channels * kh * kw, n * count * out_w), out_w  # (C, kh, kw, n, rows, W') -> (C·kh·kw, n·rows·W')


def _downsample_applies(x, weight, stride, padding):
    """A 3x3 conv with stride 2 and padding 1 of an even-sided x (diffusers' Downsample2D)."""
    return weight.shape[2:] == (3, 3) and stride == 2 and padding == 1 and x.shape[2] % 2 == x.shape[3] % 2 == 0


def _downsample_im2col(x, kh, kw, stride, rows, out_w):
    """`_im2col` of x (n, C, H, W) zero-padded by one pixel, for a 3x3 kernel at stride 2, from its parity
    grids (`winograd.parity_grids`), with output rows W/2 + 1 wide: tap (i, j) of output (a, b) is padded[2a + i,
    2b + j] = par[i%2, j%2][a + i//2, b + j//2], so the columns of tap (i, j) are grid (i%2, j%2) flattened
    and shifted by (i//2)·(W/2 + 1) + j//2, one long copy per channel and image. Column b = W/2 of each row
    is not an output (it reads the next grid row): the caller drops it after the product."""
    count = rows.stop - rows.start
    par = winograd.parity_grids(x, 2 * rows.start - 1, 2 * rows.stop + 1)  # (2p, 2q, C, n, rows+1, W/2+1)
    width = par.shape[-1]
    grids = par.reshape(2, 2, x.shape[1], len(x), -1)  # each grid's rows flattened: (2p, 2q, C, n, (rows+1)·(W/2+1))
    cols = np.empty((x.shape[1], kh, kw, len(x), count * width), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            grid, start = grids[i % 2, j % 2], (i // 2) * width + j // 2
            stop = min(start + count * width, grid.shape[-1])  # the last column of tap (1, 1) runs off the end
            cols[:, i, j, :, : stop - start] = grid[:, :, start:stop]
            cols[:, i, j, :, stop - start :] = 0
    return cols.reshape(-1, len(x) * count * width), width  # (C, kh, kw, n, rows·(W/2+1)) -> (C·kh·kw, ·)


def _conv_few_outputs(x, weight, bias=None):
    """Stride-1 conv2d of a padded x when kh·kw·O ≤ C: multiply first, then shift and add.

    One matrix product applies every kernel tap (i, j) to every position, z_ij = W[:, :, i, j] x, and the
    output is Σ_ij z_ij shifted by (i, j). z is no larger than x, where im2col would copy x kh·kw times.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = height - kh + 1, width - kw + 1
    taps = weight.transpose(2, 3, 0, 1).reshape(kh * kw * out_channels, channels)  # (O, C, kh, kw) -> (kh·kw·O, C)
    z = taps @ x.reshape(batch, channels, height * width)  # (kh·kw·O, C) @ (B, C, HW) -> (B, kh·kw·O, HW)
    z = z.reshape(batch, kh, kw, out_channels, height, width)
    y = z[:, 0, 0, :, :out_h, :out_w].copy()
    for i in range(kh):
        for j in range(kw):
            if i or j:
                y += z[:, i, j, :, i : i + out_h, j : j + out_w]
    if bias is not None:
        y += bias[:, None, None]
    return y


def upsample_conv(x, weight, bias=None):
    """`nn.upsample_conv` on the CPU: nearest ×2 upsampling then a 3x3 conv (padding 1), as four 2x2 convs of
    x itself, one per parity (p, q) of the output pixel; the upsampled image is never made.

    Output row 2a + p of the upsampled image u sees u rows 2a + p − 1 .. 2a + p + 1, which are x rows
    a − 1, a, a (p = 0) or a, a, a + 1 (p = 1). So the kernel's rows fall into two groups that see the same
    x row (ROW_SUMS[p]), its columns likewise, and

        y[2a + p, 2b + q] = Σ_{r, c ∈ {0, 1}} K_pq[r, c] · x_pad[a + p + r, b + q + c],   K_pq = R_p g R_qᵀ

    4 taps per output instead of 9 (the count Winograd F(2x2, 3x3) reaches), in plain im2col products: the
    columns of x's 9 shifts are made once per block, and each parity takes 4 of them (2 products of
    (O, 2C) @ (2C, n·rows·W)). Blocks of whole images or of row bands, shared out over the threads."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    kernel = upsample_kernel(weight)  # (2p, 2q, 2r, O, 2c·C)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.empty((batch, out_channels, 2 * height, 2 * width), dtype=x.dtype)

    def block(images_rows):
        images, rows = images_rows
        part = padded[images]
        count = rows.stop - rows.start
        cols = np.empty((3, 3, channels, len(part), count, width), dtype=x.dtype)  # shift (i, j) of x_pad
        for i in range(3):
            for j in range(3):
                shifted = part[:, :, rows.start + i : rows.stop + i, j : j + width]
                cols[i, j] = shifted.transpose(1, 0, 2, 3)  # (n, C, rows, W) -> (C, n, rows, W)
        cols = cols.reshape(3, 3 * channels, -1)  # (3i, 3j·C, n·rows·W): shifts (i, j), (i, j + 1) adjacent
        sums = np.empty((2, out_channels, cols.shape[-1]), dtype=x.dtype)
        for p in range(2):
            for q in range(2):
                taps = slice(q * channels, (q + 2) * channels)  # column shifts q, q + 1
                np.matmul(kernel[p, q, 0], cols[p, taps], out=sums[0])  # row shift p
                np.matmul(kernel[p, q, 1], cols[p + 1, taps], out=sums[1])  # row shift p + 1
                sums[0] += sums[1]
                if bias is not None:
                    sums[0] += bias[:, None]
                target = y[images, :, 2 * rows.start + p : 2 * rows.stop : 2, q::2]  # (n, O, rows, W) view
                target[...] = sums[0].reshape(out_channels, len(part), count, width).transpose(1, 0, 2, 3)

    shared_out(block, blocks(batch, height, 9 * channels * width, _im2col_budget(np)))
    return y


ROW_SUMS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=np.float32)  # R_p: (2p, 2r, 3i)
UPSAMPLE_TAPS = np.einsum("pri,qcj->prqcij", ROW_SUMS, ROW_SUMS).reshape(16, 9)  # R_p ⊗ R_q: (p, r, q, c) <- (i, j)


def upsample_kernel(weight):
    """K_pq = R_p g R_qᵀ for every channel pair of a 3x3 weight (O, C, 3, 3), as (2p, 2q, 2r, O, 2c·C): one
    product (O·C, 9) @ (9, 16), then laid out so that K[p, q, r] multiplies the columns of shifts (p + r, q)
    and (p + r, q + 1). Kept per weight like Winograd's kernels (`winograd.kept`)."""
    return winograd.kept(weight, _upsample_taps)


def _upsample_taps(weight):
    out_channels, channels = weight.shape[:2]
    taps = weight.reshape(out_channels * channels, 9) @ UPSAMPLE_TAPS.T  # (O·C, 9) @ (9, 16)
    taps = taps.reshape(out_channels, channels, 2, 2, 2, 2)  # (O, C, p, r, q, c)
    return np.ascontiguousarray(taps.transpose(2, 4, 3, 0, 5, 1)).reshape(2, 2, 2, out_channels, 2 * channels)


def silu_inplace(x):
    """`nn.silu` overwriting x (a buffer the caller owns): on the CPU in chunks of about SILU_CHUNK floats
    (shared out over the threads), so that no second full-size array is ever held and small examples do not
    pay NumPy's per-call cost one by one; on a GPU all at once (fewer kernel launches)."""
    xp = get_array_module(x)
    if xp is np and x.flags.c_contiguous:
        parts, step = x.reshape(-1), SILU_CHUNK  # (B, ...) -> (B·...) view: chunks of floats
    else:
        parts, step = x, max(1, SILU_CHUNK // x[0].size) if xp is np else len(x)  # chunks of examples

    def chunk(start):
        part = parts[start : start + step]  # a view into x
        denominator = -part
        xp.exp(denominator, out=denominator)  # e^(−x), in the one temporary
        denominator += 1
        part /= denominator

    if xp is np:
        shared_out(chunk, range(0, len(parts), step))
    else:
        chunk(0)
    return x


SILU_CHUNK = 1 << 16  # floats per chunk (256 KiB): the temporary stays in cache


def group_norm(x, weight, bias, num_groups, eps):
    """`nn.group_norm` on the CPU, its formula run on chunks of about NORM_CHUNK floats (whole groups),
    shared out over the threads (one large image normalises on every core). The groups' sums and sums of
    squares are BLAS products, a few times faster than NumPy's reductions along an axis and as exact
    (`tests/test_nn.py` checks them against a float64 loop)."""
    batch, channels = x.shape[:2]
    rows = np.ascontiguousarray(x).reshape(batch * num_groups, -1)  # (B, C, H, W) -> (B·G, C/G·HW)
    size = rows.shape[1]
    out = np.empty_like(rows)
    ones = np.ones(size, dtype=rows.dtype)
    gamma, beta = weight.reshape(num_groups, -1), bias.reshape(num_groups, -1)  # (G, C/G)
    step = max(1, NORM_CHUNK // size)

    def chunk(start):
        part = slice(start, start + step)
        centered = out[part]  # a view: normalised in place
        np.subtract(rows[part], (rows[part] @ ones / size)[:, None], out=centered)  # x − μ_g
        var = (centered[:, None] @ centered[:, :, None])[:, 0, 0] / size  # (n, 1, N) @ (n, N, 1) -> (n,): σ²_g
        group = np.arange(start, start + len(centered)) % num_groups  # the group of each row
        scale = gamma[group] / np.sqrt(var + eps)[:, None]  # (n, C/G)
        target = centered.reshape(len(centered), gamma.shape[1], -1)  # (n, C/G, HW) view
        target *= scale[:, :, None]
        target += beta[group][:, :, None]

    shared_out(chunk, range(0, len(rows), step))
    return out.reshape(x.shape)


NORM_CHUNK = 1 << 18  # floats per chunk of group_norm (1 MiB)
