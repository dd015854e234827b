"""Loading and converting checkpoints, and the errors for bad ones."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import max_abs
from models import save_pipeline_folder, torch_eps
from tinyddim import DDIMPipeline, UNet2DModel, convert

X = np.random.default_rng(0).standard_normal((2, 1, 16, 16), dtype=np.float32)
UNET_PARITY = 2.5e-5  # max |ε ours − ε diffusers| of the loaded weights; measured 2.4e-6
FLOAT16 = 1e-2  # the same with the weights rounded to float16 (diffusers keeps float32); measured 1.1e-3


def test_converted_file_loads_the_same_unet_and_scheduler(mnist_model, fresh_folder, tmp_path):
    dst = convert(fresh_folder, str(tmp_path / "m.safetensors"))
    unet = UNet2DModel.from_pretrained(dst)
    assert np.array_equal(unet(X, 9), UNet2DModel.from_pretrained(fresh_folder)(X, 9))
    assert max_abs(unet(X, 9), torch_eps(mnist_model, X, 9)) <= UNET_PARITY
    pipe = DDIMPipeline.from_pretrained(dst)
    assert pipe.scheduler.config.beta_schedule == "linear" and pipe.scheduler.config.clip_sample is True


def test_float16_conversion_halves_the_file_and_stays_close(mnist_model, fresh_folder, tmp_path):
    full = convert(fresh_folder, str(tmp_path / "f32.safetensors"))
    half = convert(fresh_folder, str(tmp_path / "f16.safetensors"), dtype="float16")
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    assert max_abs(UNet2DModel.from_pretrained(half)(X, 9), torch_eps(mnist_model, X, 9)) <= FLOAT16


def test_convert_refuses_to_overwrite_unless_asked(fresh_folder, tmp_path):
    dst = tmp_path / "m.safetensors"
    dst.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(fresh_folder, str(dst))
    assert dst.read_bytes() == b"precious"
    convert(fresh_folder, str(dst), overwrite=True)
    assert UNet2DModel.from_pretrained(str(dst)).config.in_channels == 1


def test_pytorch_bin_weights_load_with_torch(mnist_model, tmp_path):
    import torch

    folder = save_pipeline_folder(mnist_model, tmp_path, layout="flat")
    os.remove(folder / "diffusion_pytorch_model.safetensors")
    torch.save(mnist_model.state_dict(), folder / "diffusion_pytorch_model.bin")
    assert max_abs(UNet2DModel.from_pretrained(folder)(X, 3), torch_eps(mnist_model, X, 3)) <= UNET_PARITY


def test_pytorch_bin_without_torch_says_what_to_install(mnist_model, tmp_path, monkeypatch):
    import torch

    folder = save_pipeline_folder(mnist_model, tmp_path, layout="flat")
    os.remove(folder / "diffusion_pytorch_model.safetensors")
    torch.save(mnist_model.state_dict(), folder / "diffusion_pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch"):
        UNet2DModel.from_pretrained(folder)


def _edit_config(folder, **changes):
    path = folder / "unet" / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_weights(folder, edit):
    from safetensors.numpy import load_file, save_file

    path = str(folder / "unet" / "diffusion_pytorch_model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.mark.parametrize("breakage,error,message", [
    (lambda f: None, None, None),
    (lambda f: os.remove(f / "unet" / "diffusion_pytorch_model.safetensors"), FileNotFoundError, "no UNet weights"),
    (lambda f: os.remove(f / "unet" / "config.json"), FileNotFoundError, "no UNet config"),
    (lambda f: (f / "unet" / "config.json").write_text("{not json"), ValueError, "invalid JSON in .*config.json"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64), ValueError,
     "corrupt or truncated"),
    (lambda f: _edit_config(f, down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"]),
     ValueError, "unsupported block type 'CrossAttnDownBlock2D'"),
    (lambda f: _edit_config(f, act_fn="mish"), ValueError, "unsupported act_fn='mish'"),
    (lambda f: _edit_config(f, time_embedding_type="fourier"), ValueError, "time_embedding_type"),
    (lambda f: _edit_weights(f, lambda s: s.pop("down_blocks.1.attentions.0.to_k.weight")), ValueError,
     "missing weight.*down_blocks.1.attentions.0.to_k.weight"),
    (lambda f: _edit_weights(f, lambda s: s.update({"conv_in.weight": np.zeros((16, 1, 5, 5), np.float32)})),
     ValueError, r"conv_in.weight has shape \(16, 1, 5, 5\), the config implies \(16, 1, 3, 3\)"),
    (lambda f: _edit_weights(f, lambda s: s.update({"extra.weight": np.zeros(3, np.float32)})), ValueError,
     "unexpected weight.*extra.weight"),
])
def test_bad_checkpoints_raise_errors_that_name_the_problem(fresh_folder, breakage, error, message):
    breakage(fresh_folder)
    if error is None:
        UNet2DModel.from_pretrained(fresh_folder)
        return
    with pytest.raises(error, match=message):
        UNet2DModel.from_pretrained(fresh_folder)


def test_missing_path_and_missing_scheduler_are_named(mnist_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        UNet2DModel.from_pretrained(tmp_path / "nowhere")
    folder = save_pipeline_folder(mnist_model, tmp_path / "flat", layout="flat")
    os.remove(folder / "scheduler_config.json")
    with pytest.raises(FileNotFoundError, match="no scheduler config"):
        DDIMPipeline.from_pretrained(folder)


def test_hub_id_resolves_offline_from_a_cache_the_test_fills(mnist_model, tmp_path):
    pytest.importorskip("huggingface_hub")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--google--ddpm-tiny"
    save_pipeline_folder(mnist_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = ("import tinyddim, numpy as np; pipe = tinyddim.DDIMPipeline.from_pretrained('google/ddpm-tiny');"
              "print(pipe.unet.config.block_out_channels)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "[16, 32, 32]" in done.stdout


def test_converted_file_gets_ordinary_permissions(fresh_folder, tmp_path):
    dst = convert(fresh_folder, str(tmp_path / "m.safetensors"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(dst).st_mode & 0o777 == 0o666 & ~umask
