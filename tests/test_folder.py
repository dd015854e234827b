"""sample_to_folder and `tinyddim sample --out-dir`: one PNG per image, deterministic per image, resumable,
sharded, refusing to mix two sets, and bad input caught before anything is written."""

import filecmp
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import strict  # noqa: F401  (registers the "strict" device)
import tinyddim as td
from tinyddim import folder
from tinyddim.cli import main as cli
from tinyddim.ddpm import DDPMScheduler
from tinyddim.images import numpy_to_pil
from tinyddim.weights import map_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = dict(num_inference_steps=3, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def pipe(bundled_pipe):
    return bundled_pipe


@pytest.fixture(scope="module")
def reference(one_process_folder):
    """10 images, 3 steps, batch 4, in one run: the folder the other runs must reproduce."""
    return one_process_folder(10, **RUN)


def pngs(out):
    return sorted(name for name in os.listdir(out) if name.endswith(".png"))


def same_pngs(a, b):
    names = pngs(a)
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return names == pngs(b) and not mismatch and not errors


def close_pngs(a, b):
    """The same names, and pixels at most one gray level apart on at most 0.1% of them (at least 1)."""
    names = pngs(a)
    diff = np.abs(np.stack([pixels(a, name) for name in names]) - np.stack([pixels(b, name) for name in names]))
    return names == pngs(b) and diff.max() <= 1 and (diff > 0).sum() <= max(1, 0.001 * diff.size)


def pixels(out, name):
    return np.asarray(Image.open(os.path.join(out, name)), dtype=np.int16)


def tree(path):
    return sorted(os.path.relpath(os.path.join(d, name), path) for d, dirs, files in os.walk(path)
                  for name in dirs + files)


def test_each_png_is_its_image_sampled_alone_from_default_rng_seed_k(pipe, reference):
    assert pngs(reference) == [f"{k:06d}.png" for k in range(10)]
    worst, moved = 0, 0
    for k in range(10):
        image = Image.open(reference / f"{k:06d}.png")
        assert image.format == "PNG" and image.mode == "L" and image.size == (16, 16)
        alone = pipe(batch_size=1, generator=[np.random.default_rng([0, k])], num_inference_steps=3,
                     output_type="np", progress=False).images
        expected = np.asarray(numpy_to_pil(alone)[0], dtype=np.int16)
        diff = np.abs(pixels(reference, f"{k:06d}.png") - expected)
        worst, moved = max(worst, diff.max()), moved + (diff > 0).sum()
    assert worst <= 1 and moved <= 0.001 * 10 * 256  # batch 4 against batch 1: measured 0 pixels moved


def test_the_manifest_records_the_run(pipe, reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["model_sha256"] == folder.model_sha256(pipe.unet) and len(manifest["model_sha256"]) == 64
    assert manifest["pipeline"] == "DDIMPipeline" and manifest["scheduler"]["_class_name"] == "DDIMScheduler"
    assert manifest["scheduler"]["beta_schedule"] == pipe.scheduler.config.beta_schedule
    assert (manifest["num_images"], manifest["seed"], manifest["num_inference_steps"], manifest["eta"],
            manifest["timesteps"], manifest["image_shape"], manifest["block"]) == (10, 0, 3, 0.0, None, [1, 16, 16], 4)


def test_the_model_hash_sees_one_changed_weight(pipe):
    changed = td.UNet2DModel(pipe.unet.config, map_tree(np.copy, pipe.unet.params))
    assert folder.model_sha256(changed) == folder.model_sha256(pipe.unet)
    changed.params["conv_out"]["bias"][0] += 1e-7
    assert folder.model_sha256(changed) != folder.model_sha256(pipe.unet)


def test_a_second_run_skips_everything_and_a_resumed_one_makes_only_what_is_missing(pipe, reference, tmp_path,
                                                                                  monkeypatch):
    out = tmp_path / "resumed"
    td.sample_to_folder(out, 10, pipeline=pipe, **RUN)
    for k in (1, 2, 7):
        os.remove(out / f"{k:06d}.png")
    made = []
    call = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, batch_size, **kw: made.append(batch_size) or
                        call(self, batch_size=batch_size, **kw))
    result = td.sample_to_folder(out, 10, pipeline=pipe, **RUN)
    assert (result.written, result.skipped, result.in_folder) == (3, 7, 10) and sum(made) == 3
    assert close_pngs(reference, out)  # made in batches of 2 and 1, not 4: measured 0 pixels moved
    made.clear()
    result = td.sample_to_folder(out, 10, pipeline=pipe, **{**RUN, "batch_size": 7})
    assert (result.written, result.skipped) == (0, 10) and made == []


def test_a_run_killed_at_any_moment_leaves_only_whole_pngs_and_the_next_run_finishes_it(pipe, tmp_path):
    out, run = tmp_path / "killed", dict(num_inference_steps=3, batch_size=1, progress=False)
    code = f"import tinyddim as td; td.sample_to_folder({str(out)!r}, 12, **{run!r})"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 60
    while (not out.is_dir() or len(pngs(out)) < 2) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    done = pngs(out)
    assert 2 <= len(done) < 12, "the child must be killed mid-run"
    for name in done:
        Image.open(out / name).load()  # a truncated PNG would raise here
    assert all(name in done or name == "manifest.json" or name.startswith(".tmp-") for name in os.listdir(out))
    result = td.sample_to_folder(out, 12, pipeline=pipe, **run)
    assert result.written == 12 - len(done) and result.in_folder == 12
    whole = tmp_path / "whole"
    td.sample_to_folder(whole, 12, pipeline=pipe, **run)
    assert same_pngs(whole, out)


def test_shards_are_blocks_dealt_round_robin():
    assert folder.shard_indices(10, 3, (1, 2)) == [3, 4, 5, 9]
    assert folder.shard_indices(10, 3, (0, 2)) == [0, 1, 2, 6, 7, 8]
    assert sorted(folder.shard_indices(50, 4, (0, 3)) + folder.shard_indices(50, 4, (1, 3))
                  + folder.shard_indices(50, 4, (2, 3))) == list(range(50))
    assert folder.parse_shard("2/5") == (2, 5) and folder.parse_shard((0, 1)) == (0, 1)


def test_the_union_of_three_shards_is_byte_identical_to_one_run(pipe, reference, tmp_path):
    out = tmp_path / "sharded"
    written = [td.sample_to_folder(out, 10, pipeline=pipe, shard=f"{i}/3", **RUN).written for i in (2, 0, 1)]
    assert written == [2, 4, 4]  # blocks {2}, {0}, {1} of 4, 4 and 2 images
    assert same_pngs(reference, out)


def test_shards_run_at_another_batch_size_still_cover_every_image(pipe, reference, tmp_path):
    out = tmp_path / "mixed"
    td.sample_to_folder(out, 10, pipeline=pipe, shard="0/2", **RUN)                     # sets block = 4
    td.sample_to_folder(out, 10, pipeline=pipe, shard="1/2", **{**RUN, "batch_size": 3})  # same blocks
    assert pngs(out) == pngs(reference)
    for name in pngs(out):  # batch 3 rounds differently from batch 4: at most one gray level (measured 0)
        assert np.abs(pixels(out, name) - pixels(reference, name)).max() <= 1


def test_a_pipeline_on_another_device_writes_the_same_pngs_to_a_gray_level(pipe, reference, tmp_path):
    # the device runs the plain ops (im2col, no Winograd): float32 rounding differs, and a value on the edge
    # of a gray level can round to its neighbour (measured: 1 pixel of 2560 on an Intel Xeon at one thread)
    out = tmp_path / "strict"
    td.sample_to_folder(out, 10, pipeline=pipe.to("strict"), **RUN)
    assert close_pngs(reference, out)


def test_ddpm_with_the_larger_variance_samples_to_a_folder(pipe, tmp_path):
    ddpm = td.DDPMPipeline(pipe.unet, DDPMScheduler.from_config({**pipe.scheduler.config,
                                                                 "variance_type": "fixed_large"}))
    out = tmp_path / "sigma_hat"
    td.sample_to_folder(out, 3, pipeline=ddpm, eta=None, **RUN)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"] == "DDPMPipeline" and manifest["eta"] is None
    assert manifest["scheduler"]["variance_type"] == "fixed_large"
    for k in range(3):
        alone = ddpm(batch_size=1, generator=[np.random.default_rng([0, k])], num_inference_steps=3,
                     output_type="np", progress=False).images
        assert np.abs(pixels(out, f"{k:06d}.png") - np.asarray(numpy_to_pil(alone)[0], dtype=np.int16)).max() <= 1
    with pytest.raises(ValueError, match="DDPMPipeline takes no eta"):
        td.sample_to_folder(tmp_path / "no", 3, pipeline=ddpm, eta=0.5, **RUN)
    assert not (tmp_path / "no").exists()


def test_eta_gives_each_image_its_own_noise(pipe, tmp_path):
    td.sample_to_folder(tmp_path / "a", 4, pipeline=pipe, eta=1.0, **RUN)
    alone = pipe(batch_size=1, generator=[np.random.default_rng([0, 3])], eta=1.0, num_inference_steps=3,
                 output_type="np", progress=False).images
    expected = np.asarray(numpy_to_pil(alone)[0], dtype=np.int16)
    assert np.abs(pixels(tmp_path / "a", "000003.png") - expected).max() <= 1


def test_timesteps_are_recorded_and_used_or_refused_clearly(pipe, tmp_path):
    import inspect

    out = tmp_path / "ts"
    if "timesteps" not in inspect.signature(type(pipe).__call__).parameters:
        with pytest.raises(ValueError, match="timesteps= needs a DDIMPipeline that takes timesteps"):
            td.sample_to_folder(out, 2, pipeline=pipe, timesteps=[900, 500, 100], **RUN)
        assert not out.exists()
        return
    td.sample_to_folder(out, 2, pipeline=pipe, timesteps=[900, 500, 100], **RUN)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["timesteps"] == [900, 500, 100] and manifest["num_inference_steps"] == 3
    alone = pipe(batch_size=1, generator=[np.random.default_rng([0, 1])], timesteps=[900, 500, 100],
                 output_type="np", progress=False).images
    assert np.abs(pixels(out, "000001.png") - np.asarray(numpy_to_pil(alone)[0], dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("change", [dict(eta=0.5), dict(seed=1), dict(num_inference_steps=4), dict(num_images=11),
                                    "model", "pipeline"])
def test_a_run_with_other_settings_is_refused_and_writes_nothing(pipe, reference, change):
    before = {name: os.path.getmtime(reference / name) for name in os.listdir(reference)}
    kwargs = {**RUN, "pipeline": pipe}
    num_images = 10
    if change == "model":
        params = map_tree(np.copy, pipe.unet.params)
        params["conv_out"]["bias"][0] += 1e-3
        kwargs["pipeline"] = td.DDIMPipeline(td.UNet2DModel(pipe.unet.config, params), pipe.scheduler)
    elif change == "pipeline":
        kwargs["pipeline"], kwargs["eta"] = td.DDPMPipeline(pipe.unet, pipe.scheduler), None
    else:
        num_images = change.pop("num_images", num_images)
        kwargs.update(change)
    with pytest.raises(ValueError, match="holds samples made with other settings"):
        td.sample_to_folder(reference, num_images, **kwargs)
    assert {name: os.path.getmtime(reference / name) for name in os.listdir(reference)} == before


def test_a_folder_of_foreign_pngs_is_refused(pipe, tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "cat.png")
    with pytest.raises(ValueError, match="holds PNGs but no manifest.json"):
        td.sample_to_folder(tmp_path, 2, pipeline=pipe, **RUN)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(num_images=0), ValueError, "num_images must be an int >= 1, got 0"),
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
    (dict(seed=-1), ValueError, "seed must be an int >= 0"),
    (dict(shard="3/2"), ValueError, "shard 3/2: need K >= 1 and 0 <= I < K"),
    (dict(shard="0/0"), ValueError, "shard 0/0"),
    (dict(shard="a/b"), ValueError, "shard must be I/K with whole numbers"),
    (dict(shard="-1/2"), ValueError, "shard must be I/K"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps=0"),
    (dict(eta=-1.0), ValueError, "eta must be a number >= 0"),
    (dict(pipeline="bundled"), TypeError, "pipeline must be a DDIMPipeline or a DDPMPipeline"),
    (dict(client="tcp://x:1"), TypeError, "client must be a dask.distributed Client"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_written(pipe, tmp_path, kwargs, error, match):
    kwargs = {**RUN, "pipeline": pipe, "num_images": 5, **kwargs}
    with pytest.raises(error, match=match):
        td.sample_to_folder(tmp_path / "out", **kwargs)
    assert os.listdir(tmp_path) == []


def test_an_out_dir_that_is_a_file_or_not_writable_is_refused(pipe, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        td.sample_to_folder(tmp_path / "file", 2, pipeline=pipe, **RUN)
    with pytest.raises(NotADirectoryError, match="is a file"):
        td.sample_to_folder(tmp_path / "file" / "sub", 2, pipeline=pipe, **RUN)
    monkeypatch.setattr(folder.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="is not writable"):
        td.sample_to_folder(tmp_path / "new" / "deeper", 2, pipeline=pipe, **RUN)
    assert tree(tmp_path) == ["file"]


# ---- the command line ---------------------------------------------------------------------------

def test_cli_folder_run_writes_the_same_pngs_and_a_final_line(reference, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["sample", "--num-images", "10", "--out-dir", str(out), "--steps", "3", "--batch-size", "4"]) == 0
    assert f"wrote 10 images, skipped 0 already there" in capsys.readouterr().out
    assert same_pngs(reference, out)
    assert cli(["sample", "--num-images", "10", "--out-dir", str(out), "--steps", "3", "--shard", "1/2"]) == 0
    assert "wrote 0 images, skipped 4 already there" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--num-images", "0"], "need --num-images >= 1"),
    (["--num-images", "3", "--shard", "3/2"], "shard 3/2"),
    (["--num-images", "3", "--shard", "a/b"], "shard must be I/K"),
    (["--num-images", "3", "--shard", "0/0"], "shard 0/0"),
    (["--num-images", "3", "-n", "4"], "-n, -o and --overwrite are for the grid"),
    (["--num-images", "3", "--steps", "4", "--out-dir", "{reference}"], "other settings"),
    (["--num-images", "3", "--out-dir", "{file}"], "is a file"),
    (["--out-dir", "{new}"], "needs both --num-images N and --out-dir DIR"),
    (["--num-images", "3", "--dask", "local:x"], "local:N needs a number of workers"),
])
def test_cli_folder_bad_input_is_one_line_exit_2_and_nothing_written(reference, tmp_path, capsys, args, match):
    (tmp_path / "file").write_text("x")
    paths = dict(reference=reference, file=tmp_path / "file", new=tmp_path / "new")
    args = [arg.format(**paths) for arg in args]
    if "--out-dir" not in args:
        args += ["--out-dir", str(tmp_path / "new")]
    before = tree(reference)
    assert cli(["sample"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinyddim sample: error:") and match in err and "\n" not in err
    assert tree(tmp_path) == ["file"] and tree(reference) == before


def test_cli_dask_without_the_extra_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    assert cli(["sample", "--num-images", "3", "--out-dir", str(tmp_path / "o"), "--dask", "local:2"]) == 2
    assert "tinyddim[dask]" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_unreachable_scheduler_is_an_error_within_the_timeout(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    args = ["--dask", f"tcp://127.0.0.1:{port}", "--dask-timeout", "1"]
    assert cli(["sample", "--num-images", "3", "--out-dir", str(tmp_path / "o")] + args) == 2
    assert time.monotonic() - start < 20  # measured 1.1 s
    assert "no Dask scheduler answered" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_temporary_files_of_a_killed_run_are_removed_once_stale(pipe, reference, tmp_path):
    out = tmp_path / "stale"
    td.sample_to_folder(out, 2, pipeline=pipe, **RUN)
    old, new = out / ".tmp-000001.png-dead.part", out / ".tmp-000001.png-live.part"
    old.write_bytes(b"half a png")
    new.write_bytes(b"being written")
    os.utime(old, (time.time() - folder.STALE_TMP_SECONDS - 1,) * 2)
    td.sample_to_folder(out, 2, pipeline=pipe, **RUN)
    assert not old.exists() and new.exists()
