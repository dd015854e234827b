"""What the test files share: the reference models, folders and pipelines, and `rel_err`.

The helper modules beside this file are imported by name: `models` (small diffusers UNets with random
weights in each checkpoint family's shape, saved as diffusers saves them) and `strict` (a stand-in
device that refuses host conversions, registered as device "strict" on import). This folder is put on
`sys.path` here, so `from models import ...` and `from strict import ...` work in every test file
whatever pytest's import mode.

`max_abs` and `rel_err` are the error measures the bounds are written in (`from conftest import ...`).

Fixtures (the session-wide ones are built once and must not be changed by a test):
    mnist_model      diffusers UNet2DModel, random weights, the one-channel 16x16 "mnist" family
    mnist_folder     that model saved as a diffusers pipeline folder (unet/ + scheduler/), read-only
    fresh_folder     a copy of mnist_folder in the test's tmp_path, for tests that break or edit it
    mnist_unet       tinyddim's UNet2DModel loaded from mnist_folder
    mnist_pipe       tinyddim's DDIMPipeline loaded from mnist_folder, progress bar off
    bundled_torch    (diffusers UNet2DModel, scheduler config) of the trained bundled model
"""

import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import strict  # noqa: E402,F401  (registers the "strict" device for every test)


def max_abs(ours, ref):
    """max |ours − ref| as a float (`ref` may be a torch tensor)."""
    ref = ref.detach().cpu().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - ref).max())


def benchmark_module(name):
    """The script benchmarks/<name>.py as a module (benchmarks/ is on the path only while it imports)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def rel_err(ours, ref):
    """max |ours − ref| / max(1, max |ref|): absolute for outputs of size ≤ 1, relative above.

    `ref` may be a torch tensor. Scheduler outputs such as x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t grow like
    1/√ᾱ_t, and float32 rounds them in proportion, so their errors are compared relative to their size.
    """
    ref = ref.detach().cpu().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    return float(np.abs(np.asarray(ours) - ref).max() / max(1.0, float(np.abs(ref).max())))


@pytest.fixture(scope="session")
def mnist_model():
    return models.diffusers_unet("mnist")


@pytest.fixture(scope="session")
def mnist_folder(mnist_model, tmp_path_factory):
    return models.save_pipeline_folder(mnist_model, tmp_path_factory.mktemp("mnist_pipe"))


@pytest.fixture()
def fresh_folder(mnist_folder, tmp_path):
    return Path(shutil.copytree(mnist_folder, tmp_path / "pipe"))


@pytest.fixture(scope="session")
def mnist_unet(mnist_folder):
    from tinyddim import UNet2DModel

    return UNet2DModel.from_pretrained(mnist_folder)


@pytest.fixture(scope="session")
def mnist_pipe(mnist_folder):
    from tinyddim import DDIMPipeline

    pipe = DDIMPipeline.from_pretrained(mnist_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def bundled_torch():
    from tinyddim.pipelines import BUNDLED_MODEL

    return models.diffusers_unet_from_file(BUNDLED_MODEL)


@pytest.fixture(scope="session")
def bundled_pipe():
    """The bundled model's DDIMPipeline, loaded once (tests must not change its scheduler)."""
    import tinyddim

    return tinyddim.default_pipeline()


@pytest.fixture(scope="session")
def one_process_folder(bundled_pipe, tmp_path_factory):
    """make(n, **run): a folder of n images sampled by the bundled model in one process, made once per
    settings; the folder that sharded, resumed and distributed runs must reproduce."""
    import tinyddim

    made = {}

    def make(n, **run):
        key = (n, tuple(sorted(run.items())))
        if key not in made:
            made[key] = tmp_path_factory.mktemp("one_process") / "samples"
            result = tinyddim.sample_to_folder(made[key], n, pipeline=bundled_pipe, **run)
            assert (result.written, result.skipped, result.in_folder) == (n, 0, n)
        return made[key]

    return make
