"""The `tinyddim` command: what it writes, and one line on stderr with exit code 2 for bad input."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from tinyddim.cli import main as cli


def run_module(*args, cwd=None):
    """`python -m tinyddim ARGS` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "tinyddim", *map(str, args)], capture_output=True, text=True, cwd=cwd)


# ---- tinyddim sample --------------------------------------------------------------------------------

def test_cli_sample_writes_a_valid_png_in_a_temp_dir(tmp_path):
    out = tmp_path / "samples.png"
    done = run_module("sample", "-n", "4", "--steps", "3", "-o", out, cwd=tmp_path)
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
    output = [] if "-o" in args else ["-o", tmp_path / "s.png"]
    done = run_module("sample", *output, *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_cli_refuses_to_overwrite_an_existing_grid(tmp_path, capsys):
    out = tmp_path / "samples.png"
    out.write_bytes(b"mine")
    assert cli(["sample", "-n", "1", "--steps", "1", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"mine"


def test_cli_sample_with_a_model_writes_a_png_and_refuses_to_overwrite(mnist_folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["sample", "--model", str(mnist_folder), "-n", "4", "--steps", "2", "-o", str(out)]
    assert cli(args) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 4 * 16
    assert cli(args) == 2 and "exists" in capsys.readouterr().err
    assert cli(args + ["--overwrite"]) == 0
    assert cli(["sample", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# ---- tinyddim convert -------------------------------------------------------------------------------

def test_cli_convert_writes_file_and_reports_errors_in_one_line(fresh_folder, tmp_path, capsys):
    dst = tmp_path / "cli.safetensors"
    assert cli(["convert", str(fresh_folder), str(dst)]) == 0 and dst.is_file()
    assert cli(["convert", str(fresh_folder), str(dst)]) == 2
    assert "exists" in capsys.readouterr().err
    weights = fresh_folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    dst2 = tmp_path / "bad.safetensors"
    assert cli(["convert", str(fresh_folder), str(dst2)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt or truncated" in err and "Traceback" not in err
    assert not dst2.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_python_m_tinyddim_convert_runs(mnist_folder, tmp_path):
    dst = tmp_path / "m.safetensors"
    done = run_module("convert", mnist_folder, dst, "--dtype", "float16")
    assert done.returncode == 0, done.stderr
    assert dst.is_file()
