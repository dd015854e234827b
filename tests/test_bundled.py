"""The bundled MNIST model: it loads offline, samples what it sampled before, and the CLI uses it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tinyddim
from tinyddim.cli import main as cli
from tinyddim.pipelines import BUNDLED_MODEL

FIXTURE = Path(__file__).parent / "fixtures" / "bundled_sample.npz"


def test_bundled_model_ships_inside_the_package_with_its_model_card():
    assert Path(BUNDLED_MODEL).is_file() and Path(BUNDLED_MODEL).stat().st_size < 8 * 2**20
    assert (Path(BUNDLED_MODEL).parent / "README.md").is_file()
    pipe = tinyddim.default_pipeline()
    assert pipe.unet.sample_shape == (1, 16, 16)
    assert isinstance(pipe.scheduler, tinyddim.DDIMScheduler)


def test_few_step_sample_with_a_fixed_seed_matches_the_stored_fixture():
    stored = np.load(FIXTURE)
    images = tinyddim.sample(batch_size=len(stored["images"]), num_inference_steps=int(stored["steps"]),
                             generator=int(stored["seed"]), output_type="np", progress=False)
    np.testing.assert_allclose(images, stored["images"], atol=1e-4)


def test_sample_returns_pil_digits_by_default_and_a_trajectory_when_asked():
    images = tinyddim.sample(batch_size=2, num_inference_steps=2, generator=0, progress=False)
    assert [image.size for image in images] == [(16, 16)] * 2
    images, trajectory = tinyddim.sample(batch_size=2, num_inference_steps=2, generator=0, output_type="np",
                                         return_trajectory=True, progress=False)
    assert images.shape == (2, 16, 16, 1) and trajectory.x_t.shape == (3, 2, 1, 16, 16)


def test_sample_over_quadratic_timesteps_is_the_bundled_pipeline_over_them():
    timesteps = tinyddim.quadratic_timesteps(10)
    images, trajectory = tinyddim.sample(batch_size=2, generator=0, timesteps=timesteps, output_type="np",
                                         return_trajectory=True, progress=False)
    pipe = tinyddim.default_pipeline()
    expected = pipe(batch_size=2, generator=0, timesteps=timesteps, output_type="np", progress=False).images
    assert np.array_equal(images, expected) and trajectory.timesteps.tolist() == timesteps.tolist()
    leading = tinyddim.sample(batch_size=2, generator=0, num_inference_steps=10, output_type="np", progress=False)
    assert not np.array_equal(images, leading)


def test_cli_sample_writes_a_valid_png_in_a_temp_dir(tmp_path):
    out = tmp_path / "samples.png"
    done = subprocess.run([sys.executable, "-m", "tinyddim", "sample", "-n", "4", "--steps", "3", "-o", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 2 * 16 * 4
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]


@pytest.mark.parametrize("args,message", [
    (["-n", "0"], "-n >= 1"),
    (["--steps", "many"], "invalid int value"),
    (["--steps", "2000"], "num_inference_steps"),
    (["--eta", "-1"], "--eta >= 0"),
    (["--device", "tpu"], "invalid choice"),
    (["--model", "/no/such/model"], "no such file or folder"),
    (["-o", "/no/such/folder/s.png"], "no such folder"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_cli_arguments_give_one_line_and_exit_code_2(args, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tinyddim", "sample", "-o", str(tmp_path / "s.png"), *args]
                          if "-o" not in args else [sys.executable, "-m", "tinyddim", "sample", *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_cli_refuses_to_overwrite_an_existing_grid(tmp_path, capsys):
    out = tmp_path / "samples.png"
    out.write_bytes(b"mine")
    assert cli(["sample", "-n", "1", "--steps", "1", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"mine"
