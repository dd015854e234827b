"""The hand-written UNet against diffusers' UNet2DModel, for each family of real checkpoints."""

import numpy as np
import pytest

from models import FAMILIES, diffusers_unet, save_pipeline_folder, torch_eps
from tinyddim import UNet2DModel

# max |ε ours − ε diffusers| (float32): measured 1.0e-6 – 2.2e-6 over the tests below (diffusers 0.42.1,
# torch 2.13.0, 1 and 2 threads); the bound is about 10x the largest
TOLERANCE = 2.5e-5


def eps_diff(unet, model, x, t):
    """max |ε_θ(x, t) of tinyddim − ε_θ(x, t) of diffusers|."""
    return float(np.abs(unet(x, t) - torch_eps(model, x, t)).max())


def x_like(family, batch=2, height=None, width=None, seed=1):
    config = FAMILIES[family]
    size = config["sample_size"]
    shape = (batch, config["in_channels"], height or size, width or size)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unet_matches_diffusers_for_each_checkpoint_family(family, tmp_path):
    model = diffusers_unet(family)
    unet = UNet2DModel.from_pretrained(save_pipeline_folder(model, tmp_path))
    x = x_like(family)
    for t in (0, 999, np.array([3, 640])):
        assert eps_diff(unet, model, x, t) <= TOLERANCE


def test_unet_loads_old_attention_keys_and_old_config(tmp_path):
    model = diffusers_unet("ddpm-cifar10")
    folder = save_pipeline_folder(model, tmp_path, layout="flat", old_keys=True, old_config=True)
    unet = UNet2DModel.from_pretrained(folder)
    x = x_like("ddpm-cifar10")
    assert eps_diff(unet, model, x, 10) <= TOLERANCE


def test_missing_attention_head_dim_means_8_but_null_means_one_head(tmp_path):
    model = diffusers_unet("butterflies")  # attention_head_dim=8: 2 heads of 8 at 16 channels
    folder = save_pipeline_folder(model, tmp_path, layout="flat")
    config_path = tmp_path / "config.json"
    import json

    config = json.loads(config_path.read_text())
    del config["attention_head_dim"]
    config_path.write_text(json.dumps(config))
    x = x_like("butterflies")
    assert eps_diff(UNet2DModel.from_pretrained(folder), model, x, 5) <= TOLERANCE
    config["attention_head_dim"] = None
    config_path.write_text(json.dumps(config))
    assert UNet2DModel.from_pretrained(folder).config.attention_head_dim is None


def test_unet_variants_scale_shift_mid_scale_and_center_input(tmp_path):
    model = diffusers_unet("mnist", resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4,
                           mid_block_scale_factor=1.414, center_input_sample=True, out_channels=2)
    unet = UNet2DModel.from_pretrained(save_pipeline_folder(model, tmp_path))
    x = x_like("mnist")
    assert eps_diff(unet, model, x, 321) <= TOLERANCE


def test_unet_without_mid_attention_or_mid_block_matches_diffusers(tmp_path):
    for overrides in (dict(add_attention=False), dict(mid_block_type=None)):
        model = diffusers_unet("mnist", **overrides)
        unet = UNet2DModel.from_pretrained(save_pipeline_folder(model, tmp_path / next(iter(overrides))))
        x = x_like("mnist")
        assert eps_diff(unet, model, x, 42) <= TOLERANCE


def test_unet_takes_non_square_input(tmp_path):
    model = diffusers_unet("butterflies")
    unet = UNet2DModel.from_pretrained(save_pipeline_folder(model, tmp_path))
    x = x_like("butterflies", height=8, width=24)
    assert unet(x, 7).shape == (2, 3, 8, 24)
    assert eps_diff(unet, model, x, 7) <= TOLERANCE


@pytest.mark.parametrize("shape,message", [
    ((1, 16, 16), "4-D"), ((1, 3, 16, 16), "channels"), ((1, 1, 10, 16), "halved"),
])
def test_bad_input_shapes_are_named(mnist_unet, shape, message):
    with pytest.raises(ValueError, match=message):
        mnist_unet(np.zeros(shape, np.float32), 1)


def test_wrong_number_of_timesteps_is_named(mnist_unet):
    with pytest.raises(ValueError, match="3 timesteps for a batch of 2"):
        mnist_unet(np.zeros((2, 1, 16, 16), np.float32), [1, 2, 3])
    with pytest.raises(TypeError, match="timestep"):
        mnist_unet(np.zeros((2, 1, 16, 16), np.float32), "late")


@pytest.mark.parametrize("threads", [2, 3])
def test_batch_shared_out_over_cpu_threads_matches_diffusers_and_one_pass(mnist_unet, mnist_model, threads,
                                                                            monkeypatch):
    from threadpoolctl import threadpool_info

    from tinyddim import parallel, processes
    from tinyddim.unet import unet_forward

    x, t = x_like("mnist", batch=5), np.array([0, 10, 500, 900, 999])
    one_pass = unet_forward(mnist_unet.params, mnist_unet.config, x, t)
    blas_threads = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    calls = []
    monkeypatch.setattr(parallel, "cpu_threads", lambda: threads)
    monkeypatch.setattr(processes, "ENABLED", False)  # the threads (tests/test_processes.py: the processes)

    def traced(params, config, sample, timesteps):
        calls.append(len(sample))
        return unet_forward(params, config, sample, timesteps)

    monkeypatch.setattr("tinyddim.unet.unet_forward", traced)
    eps = mnist_unet(x, t)
    assert sorted(calls) == sorted(len(part) for part in np.array_split(x, threads))  # one slice per thread
    assert np.abs(eps - one_pass).max() <= 1e-5  # the slices round like the whole batch, to float32
    assert eps_diff(mnist_unet, mnist_model, x, t) <= TOLERANCE
    assert [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"] == blas_threads


def test_without_threadpoolctl_the_batch_runs_as_one_pass(mnist_unet, monkeypatch):
    from tinyddim import parallel

    monkeypatch.setitem(parallel._state, "controller", None)  # as if threadpoolctl were not installed
    assert parallel.cpu_threads() == 1
    x, calls = x_like("mnist", batch=3), []
    out = parallel.batch_parallel(lambda sample, t: calls.append(len(sample)) or mnist_unet(sample, t), x, [7] * 3)
    assert calls == [3] and np.array_equal(out, mnist_unet(x, 7))


def test_one_large_image_shares_its_conv_bands_and_silu_chunks_over_threads(mnist_unet, monkeypatch):
    import threading

    from tinyddim import parallel
    from tinyddim.unet import unet_forward

    x = np.random.default_rng(3).standard_normal((1, 1, 64, 64)).astype(np.float32)  # one image, 64x64
    one_pass = unet_forward(mnist_unet.params, mnist_unet.config, x, [500])
    workers = set()
    share = parallel._share
    monkeypatch.setattr(parallel, "cpu_threads", lambda: 2)
    monkeypatch.setattr(parallel, "_share", lambda fn, items, threads: share(
        lambda item: workers.add(threading.current_thread().name) or fn(item), items, threads))
    eps = mnist_unet(x, 500)
    assert len(workers) == 2  # the bands ran in both worker threads
    assert np.abs(eps - one_pass).max() <= 1e-5
    assert np.abs(eps - torch_eps(diffusers_unet("mnist"), x, 500)).max() <= TOLERANCE
