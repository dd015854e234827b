"""Winograd F(2x2, 3x3): the CPU fast path of `nn.conv2d` for 3x3 convolutions (stride 1, padding 1), the
bulk of the UNet's FLOPs; `fastops.conv2d` hands off here where `applies` says so, and the tests check it
against the plain conv.

Each 2x2 block of a 3x3 convolution's output depends on a 4x4 tile d of the input (tiles overlap by 2).
Winograd's minimal filtering (Lavin & Gray 2016, arXiv 1509.09308) computes it with 16 products per
(input, output) channel pair instead of 36:

    Y = Aᵀ [ Σ_c (G g Gᵀ) ⊙ (Bᵀ d B) ] A

The sum over input channels c of the 16 elementwise products is 16 matrix products (O, C) @ (C, tiles);
the transforms Bᵀ·B and Aᵀ·A are additions of strided views, run two ways:

    on parity grids     x split by the parity of row and column (`parity_grids`, cut straight from x,
                        padding included): every transform is a sum of whole shifted grids, long passes
    batch last          images of 4x4 (rows of 2 tiles): x moved to (C, H, W, n), so that every pass runs
                        along the n images instead (`_winograd_batch_last`)

Both in blocks of about WINOGRAD_TILES tiles (their buffers stay in cache), shared out over the threads.
"""

import threading
import weakref

import numpy as np

from .parallel import blocks, shared_out

WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float32)
WINOGRAD_GG = np.kron(WINOGRAD_G, WINOGRAD_G)  # (16, 9): (G ⊗ G)[(a, b), (i, j)] = G[a, i] G[b, j]
WINOGRAD_TILES = 256  # tiles per block (whole images, or bands of tile rows): a block's buffers stay in cache
BATCH_LAST_PIXELS = 16  # images this small (4x4) take `_winograd_batch_last` (at 8x8 parity grids are faster)
CACHED_PAIRS = 256 * 256  # (out, in) channel pairs up to which a conv's transformed kernel is kept
WIDE_TILES = 256  # 2x2 output tiles in the batch from which a wider conv takes Winograd, its kernel made per call
_kept = {}  # (id(weight), make) -> (weak reference to weight, make(weight)): `kept`
_kept_lock = threading.Lock()


def applies(x, weight, stride, padding):
    """3x3, stride 1, padding 1, even sides, 16+ channels (below 16 the transforms cost more than the products
    they save). Up to CACHED_PAIRS channel pairs the transformed kernel is kept (16/9 of its weight's size),
    on sides of 16+ pixels (where the FLOPs are), or of 4+ with up to 128 channels (the bundled model's 8x8
    and 4x4 levels). Wider convs make their kernel on each call (one product, `winograd_kernel`), which pays
    for itself on sides of 16+ from WIDE_TILES output tiles (2x2 blocks) in the batch."""
    batch, _, height, width = x.shape
    out_channels, channels = weight.shape[:2]
    if weight.shape[2:] != (3, 3) or stride != 1 or padding != 1 or height % 2 or width % 2 \
            or min(out_channels, channels) < 16:
        return False
    if out_channels * channels > CACHED_PAIRS:
        return min(height, width) >= 16 and batch * (height // 2) * (width // 2) >= WIDE_TILES
    return min(height, width) >= (4 if max(out_channels, channels) <= 128 else 16)


def winograd_kernel(weight):
    """U = G g Gᵀ of each (out, in) channel pair's 3x3 kernel g, as (16, O, C): vec(G g Gᵀ) = (G ⊗ G) vec(g),
    so all pairs are one product (16, 9) @ (9, O·C). Kept (`kept`) up to CACHED_PAIRS channel pairs; made
    anew for wider ones."""
    return kept(weight, _transformed)


def kept(weight, make):
    """make(weight), computed once per weight and kept while the weight lives (under a lock: threads sharing
    a batch out do not each compute it), for weights of up to CACHED_PAIRS (out, in) channel pairs; made anew
    on each call for wider ones. `fastops.upsample_kernel` keeps its kernels here too."""
    if weight.shape[0] * weight.shape[1] > CACHED_PAIRS:
        return make(weight)
    key = (id(weight), make)
    with _kept_lock:
        cached = _kept.get(key)
        if cached is not None and cached[0]() is weight:
            return cached[1]
        value = make(weight)
        forget = weakref.ref(weight, lambda _, key=key: _kept.pop(key, None))
        _kept[key] = (forget, value)
        return value


def _transformed(weight):
    """(G ⊗ G) vec(g) for every channel pair: (16, 9) @ (9, O·C), read from the (O·C, 9) weights in place."""
    out_channels, channels = weight.shape[:2]
    taps = np.asarray(weight, dtype=np.float32).reshape(out_channels * channels, 9)  # (O, C, 3, 3) -> (O·C, 9)
    return (WINOGRAD_GG @ taps.T).reshape(16, out_channels, channels)  # (16, O·C) -> (16, O, C)


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
        grids = parity_grids(x[images], 2 * rows.start - 1, 2 * rows.stop + 1)  # the rows, with a halo of one
        _winograd_block(grids, kernel, y[images, :, 2 * rows.start : 2 * rows.stop], bias)  # into a (n, O, 2t, 2s) view

    shared_out(block, blocks(batch, height // 2, width // 2 + 1, WINOGRAD_TILES))  # a spare tile per grid row
    return y


def transform_input(d0, d1, d2, d3, out):
    """Bᵀ along one axis of the tiles: from views d_i of their rows (or columns) i = 0..3 into the views
    out[0..3]: d0 − d2, d1 + d2, d2 − d1, d1 − d3."""
    np.subtract(d0, d2, out=out[0])
    np.add(d1, d2, out=out[1])
    np.subtract(d2, d1, out=out[2])
    np.subtract(d1, d3, out=out[3])


def transform_output(m0, m1, m2, m3, out):
    """Aᵀ along one axis: from views m_i of rows (or columns) i = 0..3 of the products into out[0..1]:
    m0 + m1 + m2, m1 − m2 − m3."""
    np.add(m0, m1, out=out[0])
    np.add(out[0], m2, out=out[0])
    np.subtract(m1, m2, out=out[1])
    np.subtract(out[1], m3, out=out[1])


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
    transform_input(d0, d1, d2, d3, rows)
    e0, e1, e2, e3 = (rows[:, :, :, j : j + 2 * s : 2] for j in range(4))  # tile column j: padded columns 2b + j
    tiles = np.empty((4, 4, channels, t, s, n), dtype=x.dtype)  # (Bᵀ d) B
    transform_input(e0, e1, e2, e3, tiles.swapaxes(0, 1))  # into tiles[:, j]
    m = kernel @ tiles.reshape(16, channels, -1)  # (16, O, C) @ (16, C, t·s·n) -> (16, O, t·s·n)
    if bias is not None:  # on m[1, 1]: its coefficient in Aᵀ m A is 1 for all four outputs
        m[5] += bias[:, None]
    m = m.reshape(4, 4, -1, t, s, n)
    sums = np.empty((2, 4) + m.shape[2:], dtype=x.dtype)  # Aᵀ m: rows 0, 1
    transform_output(m[0], m[1], m[2], m[3], sums)
    y = np.empty((m.shape[2], t, 2, s, 2, n), dtype=x.dtype)  # (Aᵀ m) A as (O, a, p, b, q, n): pixel (2a+p, 2b+q)
    transform_output(sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3], y.transpose(4, 2, 0, 1, 3, 5))  # into y[.., p, :, q]
    out[...] = y.reshape(-1, height, width, n).transpose(3, 0, 1, 2)  # (O, H, W, n) -> (n, O, H, W)


def parity_grids(x, top, bottom):
    """Rows top..bottom−1 of x (n, C, H, W), zero-padded by one pixel on every side, split by the parity of
    row and column: `par[p, q][:, :, a, b] = padded[top + 2a + p, 2b + q − 1]` (padded rows −1 and H, columns
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
    from x's parity grids par (2p, 2q, C, n, t+1, s+1) (`parity_grids`), plus bias (O,) if given.

    The 4x4 tile of output block (a, b) is x[2a : 2a+4, 2b : 2b+4]. Split by the parity of row and column,
    x becomes four grids `par[p, q][a, b] = x[2a+p, 2b+q]`, and tile row i, column j is par[i%2, j%2] shifted
    by (i//2, j//2): every transform is then a sum of whole shifted grids, long contiguous NumPy passes. The
    column shift runs along each flattened grid, so each grid row gets one extra (unused) tile, b = s.
    """
    channels, n, t, s = par.shape[2], par.shape[3], par.shape[4] - 1, par.shape[5] - 1
    even, odd = par[0, :, :, :, :t], par[1, :, :, :, :t]  # grid rows a of parity 0 and 1, (2q, C, n, t, s+1)
    below = par[0, :, :, :, 1:]  # parity-0 rows a + 1: tile row 2
    odd_below = par[1, :, :, :, 1:]  # parity-1 rows a + 1: tile row 3
    rows = np.empty((4, 2, channels, n, t, s + 1), dtype=par.dtype)  # Bᵀ d: rows 0..3, for each column parity
    transform_input(even, odd, below, odd_below, rows)
    flat = rows.reshape(4, 2, -1)  # (4, 2q, C·n·t·(s+1)): column j of tile (a, b) is flat[:, j%2, f + j//2]
    size = flat.shape[-1]
    tiles = np.empty((4, 4, size), dtype=par.dtype)  # (Bᵀ d) B
    tiles[:, :, -1] = 0  # the last grid column: an unused tile
    transform_input(flat[:, 0, :-1], flat[:, 1, :-1], flat[:, 0, 1:], flat[:, 1, 1:], tiles[:, :, :-1].swapaxes(0, 1))
    m = kernel @ tiles.reshape(16, channels, -1)  # (16, O, C) @ (16, C, n·t·(s+1)) -> (16, O, n·t·(s+1))
    if bias is not None:  # on m[1, 1] only: A[1, p] A[1, q] = 1, so it reaches all four outputs of Aᵀ m A
        m[5] += bias[:, None]
    m = m.reshape(4, 4, -1)
    sums = np.empty((2, 4, m.shape[-1]), dtype=par.dtype)  # Aᵀ m: rows 0, 1
    transform_output(m[0], m[1], m[2], m[3], sums)
    y = np.empty((2, 2, m.shape[-1]), dtype=par.dtype)  # (Aᵀ m) A: the 2x2 outputs, by parity
    transform_output(sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3], y.swapaxes(0, 1))  # into y[:, q]
    y = y.reshape(2, 2, -1, n, t, s + 1)  # (2p, 2q, O·n·t·(s+1)) -> (2p, 2q, O, n, t, s+1)
    for p in range(2):
        for q in range(2):
            out[:, :, p::2, q::2] = y[p, q, :, :, :, :s].transpose(1, 0, 2, 3)  # (O, n, t, s) -> (n, O, t, s)
