"""Each op against a naive loop (or torch, for the ones torch defines)."""

import zlib

import numpy as np
import pytest

from tinyddim import fastattn, fastops, nn, winograd

rng = None  # each test's own generator, set by `seeded` below


@pytest.fixture(autouse=True)
def seeded(request):
    """Each test (each parameter set) draws its inputs from its own seed, whatever ran before it."""
    global rng
    rng = np.random.default_rng(zlib.crc32(request.node.name.encode()))


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def naive_conv2d(x, weight, bias, stride, pads):
    top, bottom, left, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))).astype(np.float64)
    batch, _, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out = np.zeros((batch, out_channels, (height - kh) // stride + 1, (width - kw) // stride + 1))
    for b in range(batch):
        for o in range(out_channels):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    patch = x[b, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                    out[b, o, i, j] = (patch * weight[o]).sum() + bias[o]
    return out


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (1, 1, 0), (3, 2, 1), (3, 2, (0, 1, 0, 1))])
def test_conv2d_matches_naive_loop(kernel, stride, padding, fast):
    x, weight, bias = randn(2, 3, 6, 8), randn(4, 3, kernel, kernel), randn(4)
    pads = (padding,) * 4 if isinstance(padding, int) else padding
    expected = naive_conv2d(x, weight, bias, stride, pads)
    np.testing.assert_allclose(nn.conv2d(x, weight, bias, stride=stride, padding=padding, fast=fast), expected,
                               atol=1e-5)


def naive_group_norm(x, weight, bias, num_groups, eps):
    """(x − mean) / √(var + ε) · γ + β over each group of channels, a loop in float64."""
    expected = np.empty(x.shape, dtype=np.float64)
    size = x.shape[1] // num_groups
    for b in range(x.shape[0]):
        for g in range(num_groups):
            chunk = x[b, size * g : size * (g + 1)].astype(np.float64)
            expected[b, size * g : size * (g + 1)] = (chunk - chunk.mean()) / np.sqrt(chunk.var() + eps)
    return expected * weight[None, :, None, None] + bias[None, :, None, None]


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_group_norm_matches_naive_loop(fast):
    x, weight, bias = randn(2, 6, 4, 5), randn(6), randn(6)
    expected = naive_group_norm(x, weight, bias, 3, 1e-6)
    np.testing.assert_allclose(nn.group_norm(x, weight, bias, num_groups=3, eps=1e-6, fast=fast), expected,
                               atol=3e-6)  # measured 2.6e-7


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_group_norm_of_large_offset_groups_matches_naive_loop(fast):
    """Groups of 16,384 values around a mean of 30: the sums must not lose the variance (σ = 1) to rounding."""
    x, weight, bias = 30 + randn(2, 8, 64, 64), randn(8), randn(8)
    expected = naive_group_norm(x, weight, bias, 2, 1e-6)
    np.testing.assert_allclose(nn.group_norm(x, weight, bias, num_groups=2, eps=1e-6, fast=fast), expected,
                               atol=3e-5)  # measured 3e-6 (plain), 7e-6 (fast); E[x²] − μ² in float32 gives 2e-4


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_group_norm_of_offset_and_centred_groups_in_one_call_matches_naive_loop(fast):
    """One group of each image far from zero, the rest centred, in one call: each group keeps its own
    statistics, and the offset groups keep their variance (E[x²] − μ² in float32 would lose it)."""
    x, weight, bias = randn(2, 8, 32, 32), randn(8), randn(8)
    x[0, 2:4] += 30
    x[1, 6:8] -= 50
    expected = naive_group_norm(x, weight, bias, 4, 1e-6)
    np.testing.assert_allclose(nn.group_norm(x, weight, bias, num_groups=4, eps=1e-6, fast=fast), expected,
                               atol=3e-5)  # measured 7e-6 (plain), 1.1e-5 (fast); E[x²] − μ² in float32 gives 9e-4


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("scale,eps", [(1e-2, 1e-4), (1.0, 0.5), (1e-3, 1e-5)])
def test_group_norm_adds_eps_to_the_variance_where_it_matters(scale, eps, fast):
    """Small-variance data or a large ε: √(var + ε) differs from √var by 10% and more."""
    x, weight, bias = scale * randn(2, 6, 4, 5), randn(6), randn(6)
    expected = naive_group_norm(x, weight, bias, 3, eps)
    without_eps = naive_group_norm(x, weight, bias, 3, 0.0)
    assert np.abs(expected - without_eps).max() > 0.1  # ε shows in the output
    np.testing.assert_allclose(nn.group_norm(x, weight, bias, num_groups=3, eps=eps, fast=fast), expected,
                               atol=5e-6)  # measured 4.2e-7


def test_attention_matches_naive_loop():
    q, k, v = randn(2, 5, 4), randn(2, 7, 4), randn(2, 7, 3)
    expected = np.empty((2, 5, 3))
    for b in range(2):
        for i in range(5):
            scores = np.array([q[b, i] @ k[b, j] / 2.0 for j in range(7)], dtype=np.float64)
            weights = np.exp(scores) / np.exp(scores).sum()
            expected[b, i] = sum(weights[j] * v[b, j] for j in range(7))
    np.testing.assert_allclose(nn.attention(q, k, v), expected, atol=1e-6)  # measured 5.0e-8


def test_linear_silu_and_upsample_match_definitions():
    x, weight, bias = randn(3, 4), randn(5, 4), randn(5)
    expected = np.array([[sum(x[i, k] * weight[o, k] for k in range(4)) + bias[o] for o in range(5)]
                         for i in range(3)])
    np.testing.assert_allclose(nn.linear(x, weight, bias), expected, atol=5e-6)  # measured 4.8e-7
    np.testing.assert_allclose(nn.silu(x), x / (1 + np.exp(-x.astype(np.float64))), atol=1e-6)
    image = randn(1, 2, 3, 4)
    up = nn.upsample_nearest(image)
    assert up.shape == (1, 2, 6, 8)
    for i in range(6):
        for j in range(8):
            assert np.array_equal(up[:, :, i, j], image[:, :, i // 2, j // 2])


@pytest.mark.parametrize("flip,shift", [(True, 0), (False, 1)])
def test_timestep_embedding_matches_diffusers(flip, shift):
    torch = pytest.importorskip("torch")
    from diffusers.models.embeddings import get_timestep_embedding

    t = [0, 1, 17, 500, 999]
    expected = get_timestep_embedding(torch.tensor(t), 64, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    # float32 t·freq near t = 999 is only good to ~6e-5 (one ulp of 999), whoever computes it
    np.testing.assert_allclose(nn.timestep_embedding(t, 64, flip, shift), expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("budget", [1, 200, 10_000, 1 << 20])
def test_blocked_conv2d_matches_the_plain_product_for_any_buffer_budget(budget, monkeypatch):
    monkeypatch.setattr(fastops, "_im2col_budget", lambda xp: budget)
    x, weight, bias = randn(3, 4, 9, 7), randn(5, 4, 3, 3), randn(5)
    for stride, padding in ((1, 1), (2, (0, 1, 0, 1)), (2, 1)):
        expected = nn.conv2d(x, weight, bias, stride=stride, padding=padding, fast=False)
        np.testing.assert_allclose(fastops.conv2d(x, weight, bias, stride=stride, padding=padding), expected, atol=1e-5)
    pointwise = randn(5, 4, 1, 1)
    np.testing.assert_allclose(fastops.conv2d(x, pointwise, bias), nn.conv2d(x, pointwise, bias, fast=False), atol=1e-5)
    even = randn(3, 4, 10, 8)  # a downsample (stride 2, padding 1, even sides): columns from parity grids
    assert fastops._downsample_applies(even, weight, 2, 1)
    np.testing.assert_allclose(fastops.conv2d(even, weight, bias, stride=2, padding=1),
                               nn.conv2d(even, weight, bias, stride=2, padding=1, fast=False), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (3, 16, 5, 7), (1, 4, 1, 1)])
@pytest.mark.parametrize("budget", [1, 300, 1 << 20])
def test_upsample_conv_by_parity_matches_the_conv_of_the_upsampled_image(shape, budget, monkeypatch):
    """Four 2x2 convs of x, one per output parity, against the naive 3x3 conv of the upsampled x, with blocks of
    single rows, of a few images and of the whole batch."""
    monkeypatch.setattr(fastops, "_im2col_budget", lambda xp: budget)
    x, weight, bias = randn(*shape), randn(5, shape[1], 3, 3), randn(5)
    expected = naive_conv2d(nn.upsample_nearest(x), weight, bias, 1, (1, 1, 1, 1))
    # sums of up to 144 products of N(0, 1) values in float32: differences measured up to 1.9e-5
    np.testing.assert_allclose(fastops.upsample_conv(x, weight, bias), expected, atol=5e-5)
    np.testing.assert_allclose(nn.upsample_conv(x, weight), expected - bias[:, None, None], atol=5e-5)
    np.testing.assert_allclose(nn.upsample_conv(x, weight, bias, fast=False), expected, atol=5e-5)


def test_upsample_kernel_sums_the_taps_that_see_one_pixel_and_is_kept_per_weight():
    weight = randn(4, 3, 3, 3)
    rows = [np.array([[1, 0, 0], [0, 1, 1]]), np.array([[1, 1, 0], [0, 0, 1]])]  # R_p, written out
    kernel = fastops.upsample_kernel(weight)  # (2p, 2q, 2r, O, 2c·C)
    for p in range(2):
        for q in range(2):
            expected = np.einsum("ri,ocij,sj->rosc", rows[p], weight.astype(np.float64), rows[q])  # R_p g R_qᵀ
            np.testing.assert_allclose(kernel[p, q], expected.reshape(2, 4, 6), rtol=1e-6)
    assert fastops.upsample_kernel(weight) is kernel
    wide = randn(300, 300, 3, 3)  # over CACHED_PAIRS channel pairs: made on each call
    assert fastops.upsample_kernel(wide) is not fastops.upsample_kernel(wide)
    assert len([key for key in winograd._kept if key[1] is fastops._upsample_taps]) >= 1


def test_silu_in_place_overwrites_its_input_with_the_same_values():
    x = randn(3, 2, 4, 4)
    before = x.copy()
    expected = nn.silu(x)
    assert np.array_equal(x, before)  # without inplace, x is left alone
    out = nn.silu(x, inplace=True)
    assert out is x
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 16, 16, 16), (1, 17, 16, 20), (3, 16, 18, 16)])
@pytest.mark.parametrize("tiles", [1, 7, 256])
def test_winograd_3x3_conv_matches_the_naive_loop_for_any_block_size(shape, tiles, monkeypatch):
    monkeypatch.setattr(winograd, "WINOGRAD_TILES", tiles)
    x, weight, bias = randn(*shape), randn(16, shape[1], 3, 3), randn(16)
    assert winograd.applies(x, weight, 1, 1)
    expected = naive_conv2d(x, weight, bias, 1, (1, 1, 1, 1))
    np.testing.assert_allclose(winograd.conv3x3_winograd(x, weight, bias), expected, atol=2e-5)
    np.testing.assert_allclose(nn.conv2d(x, weight, bias, padding=1), expected, atol=2e-5)


def test_winograd_kernel_is_computed_once_per_weight_and_forgotten_with_it():
    weight = randn(4, 3, 3, 3)
    first = winograd.winograd_kernel(weight)
    key = (id(weight), winograd._transformed)
    assert winograd.winograd_kernel(weight) is first and key in winograd._kept
    del weight
    assert key not in winograd._kept


def test_winograd_kernel_is_g_g_gt_of_every_channel_pair():
    weight = randn(5, 3, 3, 3)
    g = winograd.WINOGRAD_G.astype(np.float64)
    expected = np.stack([[g @ weight[o, c].astype(np.float64) @ g.T for c in range(3)] for o in range(5)])  # (O, C, 4, 4)
    np.testing.assert_allclose(winograd.winograd_kernel(weight), expected.transpose(2, 3, 0, 1).reshape(16, 5, 3),
                               rtol=1e-6, atol=1e-6)


def test_wide_convs_take_winograd_with_a_kernel_made_per_call_from_enough_tiles(monkeypatch):
    """Over CACHED_PAIRS channel pairs the transformed kernel is not kept, and Winograd applies only where the
    batch has WIDE_TILES 2x2 output tiles, on sides of 16+."""
    monkeypatch.setattr(winograd, "CACHED_PAIRS", 16 * 24)
    monkeypatch.setattr(winograd, "WIDE_TILES", 128)
    x, weight, bias = randn(2, 24, 16, 16), randn(17, 24, 3, 3), randn(17)  # 17 x 24 pairs: wide; 2 x 64 tiles
    assert winograd.applies(x, weight, 1, 1) and not winograd.applies(x[:1], weight, 1, 1)
    assert not winograd.applies(randn(8, 24, 8, 8), weight, 1, 1)  # 128 tiles, but sides under 16
    assert winograd.applies(x[:1], weight[:16], 1, 1)  # 16 x 24 pairs: its kernel is kept, one image suffices
    np.testing.assert_allclose(nn.conv2d(x, weight, bias, padding=1), naive_conv2d(x, weight, bias, 1, (1, 1, 1, 1)),
                               atol=2e-5)
    assert winograd.winograd_kernel(weight) is not winograd.winograd_kernel(weight)
    assert (id(weight), winograd._transformed) not in winograd._kept


def test_convs_that_winograd_does_not_cover_take_the_im2col_path():
    weight = randn(16, 16, 3, 3)
    for x, stride, padding in ((randn(1, 16, 17, 16), 1, 1), (randn(1, 16, 16, 16), 2, 1),
                               (randn(1, 16, 2, 2), 1, 1), (randn(1, 16, 16, 16), 1, 0)):
        assert not winograd.applies(x, weight, stride, padding)
    assert not winograd.applies(randn(1, 1, 16, 16), np.empty((512, 256, 3, 3), np.float32), 1, 1)
    assert not winograd.applies(randn(1, 3, 16, 16), randn(16, 3, 3, 3), 1, 1)  # too few channels


@pytest.mark.parametrize("kernel,padding", [((3, 3), 1), ((2, 3), (0, 1, 1, 0)), ((3, 3), 0)])
@pytest.mark.parametrize("out_channels", [1, 3])
def test_conv_to_few_channels_multiplies_first_and_matches_the_naive_loop(kernel, padding, out_channels):
    x, weight, bias = randn(2, 27, 9, 8), randn(out_channels, 27, *kernel), randn(out_channels)
    top, bottom, left, right = (padding,) * 4 if isinstance(padding, int) else padding
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    expected = naive_conv2d(x, weight, bias, 1, (top, bottom, left, right))
    np.testing.assert_allclose(fastops._conv_few_outputs(padded, weight, bias), expected, atol=2e-5)
    np.testing.assert_allclose(nn.conv2d(x, weight, bias, padding=padding), expected, atol=2e-5)


@pytest.mark.parametrize("chunk", [1, 5000, 1 << 16])
def test_fast_attention_matches_the_plain_op_over_many_small_heads_and_large_scores(chunk, monkeypatch):
    monkeypatch.setattr(fastattn, "ATTENTION_CHUNK", chunk)
    q, k, v = randn(3, 8, 64, 8), randn(3, 8, 64, 8), randn(3, 8, 64, 8)
    plain = nn.attention(q, k, v, fast=False)
    np.testing.assert_allclose(fastattn.attention(q, k, v), plain, atol=5e-6)  # measured 4.8e-7
    np.testing.assert_allclose(nn.attention(q[0, :, :10], k[0], v[0, :, :, :3]), nn.attention(
        q[0, :, :10], k[0], v[0, :, :, :3], fast=False), atol=5e-6)  # 10 queries, 64 keys, 3 value columns
    q_big = 30 * q  # scores up to ~1e3: exp would overflow without the shift by the row maximum
    scale = np.float32(1 / np.sqrt(8))
    bounds = fastattn._score_bounds
    assert bounds((q * scale)[0], k[0]).max() < 80 < bounds((q_big * scale)[0], k[0]).min()  # both branches run
    fast = nn.attention(q_big, k, v)
    assert np.isfinite(fast).all()
    np.testing.assert_allclose(fast, nn.attention(q_big, k, v, fast=False), atol=1e-4)  # measured 8.7e-6


@pytest.mark.parametrize("shape,tiles", [((2, 16, 8, 8), 1), ((3, 20, 4, 6), 7), ((1, 16, 16, 20), 256),
                                         ((1, 136, 20, 40), 50)])  # 136 channels, in bands of 2 tile rows
def test_winograd_on_parity_grids_matches_the_plain_product_for_any_block_size(shape, tiles, monkeypatch):
    monkeypatch.setattr(winograd, "WINOGRAD_TILES", tiles)
    x, weight, bias = randn(*shape), randn(24, shape[1], 3, 3), randn(24)
    expected = nn.conv2d(x, weight, bias, padding=1, fast=False)
    np.testing.assert_allclose(winograd.conv3x3_winograd(x, weight, bias), expected, atol=2e-4)  # measured 2.3e-5


@pytest.mark.parametrize("chunk", [1, 5000, 1 << 16])
@pytest.mark.parametrize("heads,with_bias", [(4, True), (1, True), (2, False)])
def test_self_attention_channels_first_matches_the_plain_one_on_tokens(chunk, heads, with_bias, monkeypatch):
    """q, k and [v; 1] as one product over the channels (1/√d in W_q, the ones from a zero row with bias 1),
    the scores transposed, the output back in (B, C, H, W): against the plain block on (B, HW, C) tokens."""
    monkeypatch.setattr(fastattn, "ATTENTION_CHUNK", chunk)
    h = randn(3, 32, 4, 5)
    maps = [{"weight": randn(32, 32) / 4, "bias": randn(32) if with_bias else None} for _ in range(4)]
    plain = nn.self_attention(h, heads, *maps, fast=False)
    np.testing.assert_allclose(fastattn.self_attention(h, heads, *maps), plain, atol=1e-5)  # measured up to 2.9e-6
    np.testing.assert_allclose(nn.self_attention(h, heads, *maps), plain, atol=1e-5)
    weight, bias = fastattn._stacked_projections(heads, *maps[:3])
    d = 32 // heads
    ones_rows = np.arange(2 * 32 + d, len(weight), d + 1)  # the last row of each head's [v; 1]
    assert len(ones_rows) == heads and not weight[ones_rows].any() and (bias[ones_rows] == 1).all()


@pytest.mark.parametrize("shape", [(3, 16, 4, 4), (2, 16, 6, 8), (4, 20, 2, 4)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_winograd_with_the_batch_last_matches_the_plain_product(shape, with_bias):
    x, weight = randn(*shape), randn(24, shape[1], 3, 3)
    bias = randn(24) if with_bias else None
    expected = nn.conv2d(x, weight, bias, padding=1, fast=False)
    out = np.full((shape[0] + 1, 24) + shape[2:], np.nan, dtype=np.float32)
    winograd._winograd_batch_last(x, winograd.winograd_kernel(weight), out[1:], bias)  # into a view
    np.testing.assert_allclose(out[1:], expected, atol=2e-4)  # measured up to 2e-5 (outputs up to ~40)
    assert np.isnan(out[0]).all()


def test_winograd_of_4x4_images_takes_the_batch_last_path_in_blocks_of_images(monkeypatch):
    monkeypatch.setattr(winograd, "WINOGRAD_TILES", 8)  # 2 images of 4 tiles per block: 5 images in 3 blocks
    blocks, batch_last = [], winograd._winograd_batch_last
    monkeypatch.setattr(winograd, "_winograd_batch_last", lambda x, *rest: blocks.append(len(x)) or batch_last(x, *rest))
    x, weight, bias = randn(5, 16, 4, 4), randn(16, 16, 3, 3), randn(16)
    expected = nn.conv2d(x, weight, bias, padding=1, fast=False)
    np.testing.assert_allclose(nn.conv2d(x, weight, bias, padding=1), expected, atol=2e-4)  # measured 1e-5
    assert blocks == [2, 2, 1]


@pytest.mark.parametrize("top,bottom", [(-1, 9), (-1, 3), (3, 9), (1, 7)])
def test_parity_grids_split_the_zero_padded_rows_by_parity(top, bottom):
    x = randn(2, 3, 8, 6)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))[:, :, top + 1 : bottom + 1]  # rows top..bottom−1
    par = winograd.parity_grids(x, top, bottom)
    for p in range(2):
        for q in range(2):
            np.testing.assert_array_equal(par[p, q], padded[:, :, p::2, q::2].transpose(1, 0, 2, 3))


def test_winograd_covers_small_images_only_with_few_channels():
    assert winograd.applies(randn(1, 64, 4, 4), randn(64, 64, 3, 3), 1, 1)  # the bundled model's 4x4
    assert winograd.applies(randn(1, 128, 8, 8), randn(64, 128, 3, 3), 1, 1)
    assert not winograd.applies(randn(1, 256, 8, 8), randn(256, 256, 3, 3), 1, 1)  # cifar10's 8x8
    assert winograd.applies(randn(1, 256, 16, 16), randn(256, 256, 3, 3), 1, 1)


@pytest.mark.parametrize("chunk", [1, 100, 1 << 16])
def test_silu_in_place_in_chunks_of_several_examples_matches_the_plain_op(chunk, monkeypatch):
    monkeypatch.setattr(fastops, "SILU_CHUNK", chunk)
    x = randn(7, 3, 5, 4)
    expected = nn.silu(x)
    assert nn.silu(x, inplace=True) is x
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-7)


def test_pointwise_conv_is_one_product_per_image_and_matches_the_naive_loop():
    x, weight, bias = randn(3, 6, 4, 5), randn(5, 6, 1, 1), randn(5)
    np.testing.assert_allclose(nn.conv2d(x, weight, bias), naive_conv2d(x, weight, bias, 1, (0, 0, 0, 0)), atol=1e-5)


def test_silu_in_place_of_a_strided_view_writes_through_to_it():
    base = randn(4, 6, 5, 8)
    view = base[:, ::2]  # not contiguous
    expected = nn.silu(view)
    nn.silu(view, inplace=True)
    np.testing.assert_allclose(base[:, ::2], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [1, 50, 1 << 16])
def test_group_norm_in_chunks_of_groups_matches_the_plain_op(chunk, monkeypatch):
    monkeypatch.setattr(fastops, "NORM_CHUNK", chunk)
    x, weight, bias = 3 + randn(3, 12, 5, 4), randn(12), randn(12)  # an offset: the centring matters
    expected = nn.group_norm(x, weight, bias, num_groups=4, eps=1e-6, fast=False)
    np.testing.assert_allclose(fastops.group_norm(x, weight, bias, 4, 1e-6), expected, atol=1e-5)  # measured 1e-6
    np.testing.assert_allclose(nn.group_norm(x[:, ::2], weight[::2], bias[::2], num_groups=3, eps=1e-5),
                               nn.group_norm(x[:, ::2], weight[::2], bias[::2], 3, 1e-5, fast=False), atol=1e-5)
