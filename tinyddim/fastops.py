"""The speed-ups of `nn.py`: the same ops, computed faster on the CPU; each tested against its plain op.

`nn.conv2d`, `nn.silu` and `nn.group_norm` hand off to this module in one line when it applies (conv2d:
`applies`, on the CPU always, on a GPU when one im2col buffer would be too large). What each trick buys:

    blocked im2col      the im2col product in blocks of output positions that fit a few MB: the buffer
                        stays in cache and memory stays flat at 256x256; several small images in one wide
                        product (the 8x8 and 4x4 levels); 1x1 convs are one product per image, no copy
    _conv_few_outputs   kh·kw·O ≤ C (conv_out to 1 or 3 channels): one product applies every tap, then
                        kh·kw shifted adds (10x at batch 8 on the cifar10 layout, 5x at 256x256)
    conv3x3_winograd    3x3, stride 1, 16+ channels on the CPU: Winograd F(2x2, 3x3), 16 products per 2x2
                        output block instead of 36 (the bulk of the UNet's FLOPs), down to 4x4 images
                        with up to 128 channels; its transforms run on whole parity grids (long passes)
                        cut straight from x, padding included (no padded copy); 4x4 images with the
                        batch as the last axis (passes along the images, not along rows of 2 tiles)
    silu_inplace        SiLU over a buffer the caller owns, in cache-sized chunks: no second full-size array
    group_norm          the sums Σx, Σx² as BLAS products (faster than NumPy's reductions), then one affine
                        map per channel (no centred copy); its chunks shared out over the threads

The blocks of a conv, and the chunks of SiLU and group_norm, are shared out over the CPU threads where the
op does not already run in one slice of a batch (`parallel.shared_out`): one 256x256 image uses every core.
Attention's speed-up is in `fastattn.py`. `benchmarks/profile_forward.py` shows the time of each piece;
`benchmarks/README.md` the measured speed.
"""

import threading
import weakref

import numpy as np

from .backend import get_array_module
from .parallel import shared_out


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
    if xp is np and _winograd_applies(x, weight, stride, padding):
        return conv3x3_winograd(x, weight, bias)
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

    blocks = _blocks(batch, out_h, channels * kh * kw * out_w, _im2col_budget(xp))
    if xp is np:
        shared_out(block, blocks)  # one large image: its bands over the threads (tinyddim/parallel.py)
    else:
        for images_rows in blocks:
            block(images_rows)
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
    grids (`_parity_grids`), with output rows W/2 + 1 wide: tap (i, j) of output (a, b) is padded[2a + i,
    2b + j] = par[i%2, j%2][a + i//2, b + j//2], so the columns of tap (i, j) are grid (i%2, j%2) flattened
    and shifted by (i//2)·(W/2 + 1) + j//2, one long copy per channel and image. Column b = W/2 of each row
    is not an output (it reads the next grid row): the caller drops it after the product."""
    count = rows.stop - rows.start
    par = _parity_grids(x, 2 * rows.start - 1, 2 * rows.stop + 1)  # (2p, 2q, C, n, rows+1, W/2+1)
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
    """`nn.group_norm` on the CPU, on chunks of whole groups (about NORM_CHUNK floats) shared out over the
    threads: each chunk's statistics from two BLAS products over x, then one affine map per channel.

        μ_g = Σx / N,  σ²_g = Σx² / N − μ²_g,  a_c = γ_c / √(σ²_g + ε),  b_c = β_c − μ_g·a_c,  y = a_c·x + b_c

    Σx and Σx² are a matrix-vector and a row-by-row product (a few times faster than NumPy's reductions
    along an axis), and x is never centred in memory. Σx²/N − μ² loses bits to cancellation where μ² ≫ σ²;
    where μ² ≤ σ² it loses at most one, and the other groups (rare in a UNet) get σ² again from their
    centred values, so every group is as exact as a two-pass variance (`tests/test_nn.py` checks both
    kinds against a float64 loop)."""
    batch, channels = x.shape[:2]
    rows = np.ascontiguousarray(x).reshape(batch * num_groups, -1)  # (B, C, H, W) -> (B·G, C/G·HW)
    size = rows.shape[1]
    out = np.empty_like(rows)
    ones = np.ones(size, dtype=rows.dtype)
    gamma, beta = weight.reshape(num_groups, -1), bias.reshape(num_groups, -1)  # (G, C/G)
    step = max(1, NORM_CHUNK // size)

    def chunk(start):
        part = rows[start : start + step]  # (n, C/G·HW): n whole groups
        mean = part @ ones / size  # μ_g
        var = _row_dots(part) / size - mean * mean  # σ²_g = E[x²] − μ²_g
        unsure = np.flatnonzero(mean * mean > var)
        if len(unsure):  # more than one bit lost: σ²_g of the centred values (two passes)
            var[unsure] = _row_dots(part[unsure] - mean[unsure, None]) / size
        group = np.arange(start, start + len(part)) % num_groups  # the group of each row
        scale = gamma[group] / np.sqrt(var + eps)[:, None]  # a_c: (n, C/G)
        shift = beta[group] - mean[:, None] * scale  # b_c: (n, C/G)
        planes = part.reshape(len(part), gamma.shape[1], -1)  # (n, C/G·HW) -> (n, C/G, HW)
        target = out[start : start + step].reshape(planes.shape)
        np.multiply(planes, scale[:, :, None], out=target)
        target += shift[:, :, None]

    shared_out(chunk, range(0, len(rows), step))
    return out.reshape(x.shape)


def _row_dots(rows):
    """Σ_j rows[i, j]² of each row, (n, N) -> (n,): a batch of (1, N) @ (N, 1) BLAS products."""
    return (rows[:, None] @ rows[:, :, None])[:, 0, 0]  # (n, 1, N) @ (n, N, 1) -> (n, 1, 1)


NORM_CHUNK = 1 << 20  # floats per chunk of group_norm (4 MiB): the bundled model's in one or two


# ---- the CPU fast path for 3x3 convolutions: Winograd F(2x2, 3x3) --------------------------------
#
# Each 2x2 block of a 3x3 convolution's output depends on a 4x4 tile d of the input (tiles overlap by 2).
# Winograd's minimal filtering (Lavin & Gray 2016, arXiv 1509.09308) computes it with 16 products per
# (input, output) channel pair instead of 36:
#
#     Y = Aᵀ [ Σ_c (G g Gᵀ) ⊙ (Bᵀ d B) ] A
#
# The sum over input channels c of the 16 elementwise products is 16 matrix products (O, C) @ (C, tiles);
# the transforms Bᵀ·B and Aᵀ·A are additions of strided views.

WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float32)
WINOGRAD_TILES = 256  # tiles per block (whole images, or bands of tile rows): a block's buffers stay in cache
BATCH_LAST_PIXELS = 16  # images this small (4x4) take `_winograd_batch_last` (at 8x8 parity grids are faster)
_winograd_kernels = {}  # id(weight) -> (weak reference to weight, its transformed kernel)
_winograd_lock = threading.Lock()


def _winograd_applies(x, weight, stride, padding):
    """3x3, stride 1, padding 1, even sides, 16 to 256x256 channels: each transformed kernel is kept, at 16/9
    of its weight's size, so the cache stays small; below 16 channels the transforms cost more than the
    products they save. Sides of 16+ pixels (where the FLOPs are), or of 4+ with up to 128 channels (the
    bundled model's 8x8 and 4x4 levels): wider convs on small images would cache large kernels for little."""
    height, width = x.shape[2:]
    smallest = 4 if max(weight.shape[:2]) <= 128 else 16
    return weight.shape[2:] == (3, 3) and stride == 1 and padding == 1 and height % 2 == width % 2 == 0 \
        and min(height, width) >= smallest and min(weight.shape[:2]) >= 16 \
        and weight.shape[0] * weight.shape[1] <= 256 * 256


def winograd_kernel(weight):
    """U = G g Gᵀ of each (out, in) channel pair's 3x3 kernel g, as (16, O, C); computed once per weight
    (under a lock: threads sharing a batch out do not each compute it)."""
    with _winograd_lock:
        cached = _winograd_kernels.get(id(weight))
        if cached is not None and cached[0]() is weight:
            return cached[1]
        kernel = np.einsum("ai,ocij,bj->aboc", WINOGRAD_G, weight, WINOGRAD_G)  # (4, 4, O, C)
        kernel = np.ascontiguousarray(kernel.reshape(16, *weight.shape[:2]), dtype=np.float32)
        forget = weakref.ref(weight, lambda _, key=id(weight): _winograd_kernels.pop(key, None))
        _winograd_kernels[id(weight)] = (forget, kernel)
        return kernel


def conv3x3_winograd(x, weight, bias=None):
    """conv2d(x, weight, bias, padding=1) for 3x3 kernels and even H, W, by Winograd F(2x2, 3x3): on parity
    grids, or for images of up to BATCH_LAST_PIXELS pixels with the batch as the last axis."""
    batch, _, height, width = x.shape
    kernel = winograd_kernel(weight)  # (16, O, C)
    y = np.empty((batch, kernel.shape[1], height, width), dtype=x.dtype)
    if height * width <= BATCH_LAST_PIXELS:
        step = max(1, WINOGRAD_TILES // (height // 2 * (width // 2)))  # whole images per block
        shared_out(lambda start: _winograd_batch_last(x[start : start + step], kernel, y[start : start + step], bias),
                   range(0, batch, step))
        return y

    def block(images_rows):
        images, rows = images_rows
        grids = _parity_grids(x[images], 2 * rows.start - 1, 2 * rows.stop + 1)  # the rows, with a halo of one
        _winograd_block(grids, kernel, y[images, :, 2 * rows.start : 2 * rows.stop], bias)  # into a (n, O, 2t, 2s) view

    shared_out(block, _blocks(batch, height // 2, width // 2 + 1, WINOGRAD_TILES))  # a spare tile per grid row
    return y


def _winograd_batch_last(x, kernel, out, bias=None):
    """out (n, O, H, W) = the Winograd F(2x2, 3x3) conv of x (n, C, H, W) (padding 1), computed on x moved to
    (C, H, W, n). A 4x4 image has rows of 2 tiles: on (n, C, H, W) every transform pass would run along 2 or
    3 floats, on (C, H, W, n) each runs along n images, and no spare tile is needed. Tile (a, b) is
    padded[:, 2a : 2a+4, 2b : 2b+4]; one copy in (into the zero-padded buffer) and one out."""
    n, channels, height, width = x.shape
    t, s = height // 2, width // 2
    padded = np.zeros((channels, height + 2, width + 2, n), dtype=x.dtype)
    padded[:, 1:-1, 1:-1] = x.transpose(1, 2, 3, 0)  # (n, C, H, W) -> (C, H, W, n)
    d0, d1, d2, d3 = (padded[:, i : i + 2 * t : 2] for i in range(4))  # tile row i: padded rows 2a + i
    rows = np.empty((4, channels, t, width + 2, n), dtype=x.dtype)  # Bᵀ d
    np.subtract(d0, d2, out=rows[0])
    np.add(d1, d2, out=rows[1])
    np.subtract(d2, d1, out=rows[2])
    np.subtract(d1, d3, out=rows[3])
    e0, e1, e2, e3 = (rows[:, :, :, j : j + 2 * s : 2] for j in range(4))  # tile column j: padded columns 2b + j
    tiles = np.empty((4, 4, channels, t, s, n), dtype=x.dtype)  # (Bᵀ d) B
    np.subtract(e0, e2, out=tiles[:, 0])
    np.add(e1, e2, out=tiles[:, 1])
    np.subtract(e2, e1, out=tiles[:, 2])
    np.subtract(e1, e3, out=tiles[:, 3])
    m = kernel @ tiles.reshape(16, channels, -1)  # (16, O, C) @ (16, C, t·s·n) -> (16, O, t·s·n)
    if bias is not None:  # on m[1, 1]: its coefficient in Aᵀ m A is 1 for all four outputs
        m[5] += bias[:, None]
    m = m.reshape(4, 4, -1, t, s, n)
    sums = np.empty((2, 4) + m.shape[2:], dtype=x.dtype)  # Aᵀ m: rows 0, 1
    np.add(m[0], m[1], out=sums[0])
    sums[0] += m[2]
    np.subtract(m[1], m[2], out=sums[1])
    sums[1] -= m[3]
    y = np.empty((m.shape[2], t, 2, s, 2, n), dtype=x.dtype)  # (Aᵀ m) A as (O, a, p, b, q, n): pixel (2a+p, 2b+q)
    for p in range(2):
        np.add(sums[p, 0], sums[p, 1], out=y[:, :, p, :, 0])
        y[:, :, p, :, 0] += sums[p, 2]
        np.subtract(sums[p, 1], sums[p, 2], out=y[:, :, p, :, 1])
        y[:, :, p, :, 1] -= sums[p, 3]
    out[...] = y.reshape(-1, height, width, n).transpose(3, 0, 1, 2)  # (O, H, W, n) -> (n, O, H, W)


def _parity_grids(x, top, bottom):
    """Rows top..bottom−1 of x (n, C, H, W), zero-padded by one pixel on every side, split by the parity of
    row and column: par[p, q][:, :, a, b] = padded[top + 2a + p, 2b + q − 1] (padded rows −1 and H, columns
    −1 and W are zeros), as (2p, 2q, C, n, (bottom−top)/2, W/2+1). Made straight from x into zeros: one
    strided copy per grid, no padded copy of x (rows of a few pixels make every extra pass costly)."""
    n, channels, height, width = x.shape
    grid_rows, s = (bottom - top) // 2, width // 2
    par = np.zeros((2, 2, channels, n, grid_rows, s + 1), dtype=x.dtype)
    for p in range(2):
        start = top + p  # the row of x in grid row 0
        first = min(grid_rows, max(0, (1 - start) // 2))  # grid rows first..stop−1 lie inside x
        stop = max(first, min(grid_rows, (height - start + 1) // 2))
        rows = slice(start + 2 * first, start + 2 * stop - 1, 2)
        inside = par[p, :, :, :, first:stop]  # (2q, C, n, stop−first, s+1)
        inside[0, :, :, :, 1:] = x[:, :, rows, 1::2].transpose(1, 0, 2, 3)  # odd columns: (n, C, ·, s) -> (C, n, ·, s)
        inside[1, :, :, :, :s] = x[:, :, rows, 0::2].transpose(1, 0, 2, 3)  # even columns
    return par


def _winograd_block(par, kernel, out, bias=None):
    """out (n, O, 2t, 2s) = the 3x3 conv of a padded block x (n, C, 2t+2, 2s+2), by Winograd F(2x2, 3x3),
    from x's parity grids par (2p, 2q, C, n, t+1, s+1) (`_parity_grids`), plus bias (O,) if given.

    The 4x4 tile of output block (a, b) is x[2a : 2a+4, 2b : 2b+4]. Split by the parity of row and column,
    x becomes four grids par[p, q][a, b] = x[2a+p, 2b+q], and tile row i, column j is par[i%2, j%2] shifted
    by (i//2, j//2): every transform is then a sum of whole shifted grids, long contiguous NumPy passes. The
    column shift runs along each flattened grid, so each grid row gets one extra (unused) tile, b = s.
    """
    channels, n, t, s = par.shape[2], par.shape[3], par.shape[4] - 1, par.shape[5] - 1
    even, odd = par[0, :, :, :, :t], par[1, :, :, :, :t]  # grid rows a of parity 0 and 1, (2q, C, n, t, s+1)
    below = par[0, :, :, :, 1:]  # parity-0 rows a + 1: tile row 2
    odd_below = par[1, :, :, :, 1:]  # parity-1 rows a + 1: tile row 3
    rows = np.empty((4, 2, channels, n, t, s + 1), dtype=par.dtype)  # Bᵀ d: rows 0..3, for each column parity
    np.subtract(even, below, out=rows[0])  # d0 − d2
    np.add(odd, below, out=rows[1])  # d1 + d2
    np.subtract(below, odd, out=rows[2])  # d2 − d1
    np.subtract(odd, odd_below, out=rows[3])  # d1 − d3
    flat = rows.reshape(4, 2, -1)  # (4, 2q, C·n·t·(s+1)): column j of tile (a, b) is flat[:, j%2, f + j//2]
    size = flat.shape[-1]
    tiles = np.empty((4, 4, size), dtype=par.dtype)  # (Bᵀ d) B
    tiles[:, :, -1] = 0  # the last grid column: an unused tile
    np.subtract(flat[:, 0, :-1], flat[:, 0, 1:], out=tiles[:, 0, :-1])
    np.add(flat[:, 1, :-1], flat[:, 0, 1:], out=tiles[:, 1, :-1])
    np.subtract(flat[:, 0, 1:], flat[:, 1, :-1], out=tiles[:, 2, :-1])
    np.subtract(flat[:, 1, :-1], flat[:, 1, 1:], out=tiles[:, 3, :-1])
    m = kernel @ tiles.reshape(16, channels, -1)  # (16, O, C) @ (16, C, n·t·(s+1)) -> (16, O, n·t·(s+1))
    if bias is not None:  # on m[1, 1] only: A[1, p] A[1, q] = 1, so it reaches all four outputs of Aᵀ m A
        m[5] += bias[:, None]
    m = m.reshape(4, 4, -1)
    sums = np.empty((2, 4, m.shape[-1]), dtype=par.dtype)  # Aᵀ m: rows 0, 1
    np.add(m[0], m[1], out=sums[0])
    sums[0] += m[2]
    np.subtract(m[1], m[2], out=sums[1])
    sums[1] -= m[3]
    y = np.empty((2, 2, m.shape[-1]), dtype=par.dtype)  # (Aᵀ m) A: the 2x2 outputs, by parity
    np.add(sums[:, 0], sums[:, 1], out=y[:, 0])
    y[:, 0] += sums[:, 2]
    np.subtract(sums[:, 1], sums[:, 2], out=y[:, 1])
    y[:, 1] -= sums[:, 3]
    y = y.reshape(2, 2, -1, n, t, s + 1)  # (2p, 2q, O·n·t·(s+1)) -> (2p, 2q, O, n, t, s+1)
    for p in range(2):
        for q in range(2):
            out[:, :, p::2, q::2] = y[p, q, :, :, :, :s].transpose(1, 0, 2, 3)  # (O, n, t, s) -> (n, O, t, s)
