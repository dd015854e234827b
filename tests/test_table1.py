"""Each cell of Table 1 (`explore.table1_cell`) samples what diffusers' own scheduler would, step by step.

The reference loop uses diffusers' DDIMScheduler / DDPMScheduler (the same config, the variance type of the
row) with our UNet's ε, and draws the noise as `sample_to_folder` documents: image k's x_T and then each
step's noise from numpy.random.default_rng([seed, k]). S = 4 with T = 1000, where diffusers' t − T // S and
our "next entry" rule pick the same previous timestep for both spacings.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler as TorchDDIMScheduler
from diffusers import DDPMScheduler as TorchDDPMScheduler
from diffusers.schedulers import scheduling_ddpm

import tinyddim as td
from tinyddim.explore import TABLE1_ROWS, table1_cell

SEED, INDICES, S = 3, (0, 5), 4


@pytest.fixture(scope="module")
def pipe(bundled_pipe):
    return bundled_pipe


def reference(pipe, row, spacing, monkeypatch):
    """x_0 in [0, 1] (B, H, W, C) by diffusers' scheduler steps, the noise drawn per image in the folder order."""
    rngs = [np.random.default_rng([SEED, k]) for k in INDICES]
    draw = lambda: np.stack([rng.standard_normal(pipe.unet.sample_shape, dtype=np.float32) for rng in rngs])
    config = {**pipe.scheduler.config, "timestep_spacing": spacing}
    if row in ("σ̂", "DDPM"):
        scheduler = TorchDDPMScheduler.from_config(
            {**config, "variance_type": "fixed_large" if row == "σ̂" else "fixed_small"})
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **kw: torch.from_numpy(draw()))
    else:
        scheduler = TorchDDIMScheduler.from_config(config)
    scheduler.set_timesteps(S)
    x_t = torch.from_numpy(draw())
    for t in scheduler.timesteps:
        eps = torch.from_numpy(pipe.unet(x_t.numpy(), int(t)))
        if row in ("σ̂", "DDPM"):
            x_t = scheduler.step(eps, t, x_t).prev_sample
        else:
            noise = torch.from_numpy(draw()) if float(row) > 0 else None
            x_t = scheduler.step(eps, t, x_t, eta=float(row), variance_noise=noise).prev_sample
    return np.clip(x_t.numpy() / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("row", list(TABLE1_ROWS) + ["DDPM"], ids=str)
def test_a_table1_cell_samples_what_diffusers_scheduler_does(pipe, row, spacing, monkeypatch):
    pipeline, call = table1_cell(pipe, row, S, spacing)
    assert pipeline.scheduler.config.timestep_spacing == spacing
    generators = [np.random.default_rng([SEED, k]) for k in INDICES]
    ours = pipeline(batch_size=len(INDICES), generator=generators, output_type="np", progress=False, **call).images
    theirs = reference(pipe, row, spacing, monkeypatch)
    # measured ≤ 3.9e-6 (diffusers steps in float32, ours in float64); η = 1 makes σ_t² almost 1 − ᾱ_prev, and
    # diffusers' float32 √(1 − ᾱ_prev − σ_t²) cancels: measured 1.6e-4 there (mean 7.7e-6)
    assert np.abs(ours - theirs).max() < (2e-3 if row == 1.0 else 4e-5)
    assert np.abs(ours - theirs).mean() < 1e-4


def test_rows_differ_where_the_paper_says_they_differ(pipe):
    """η changes the samples, σ̂ is not DDPM's own variance, and a custom list replaces the spacing."""
    def images(row, **kwargs):
        pipeline, call = table1_cell(pipe, row, S, "trailing", **kwargs)
        generators = [np.random.default_rng([SEED, k]) for k in INDICES]
        return pipeline(batch_size=2, generator=generators, output_type="np", progress=False, **call).images

    assert np.abs(images(0.0) - images(1.0)).max() > 0.05
    assert np.abs(images("σ̂") - images("DDPM")).max() > 0.05
    custom = images(0.0, timesteps=[999, 749, 499, 249])  # trailing S = 4 as a list: the same images
    np.testing.assert_array_equal(custom, images(0.0))
    _, call = table1_cell(pipe, 0.0, S, timesteps=td.quadratic_timesteps(S))
    assert sorted(call) == ["eta", "timesteps"] and list(call["timesteps"]) == [800, 355, 88, 0]  # int(linspace(0, √800, 4)²)


def load_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "mnist" / "table1.py"
    spec = importlib.util.spec_from_file_location("table1_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_committed_table():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = load_script()
    readme = (root / "README.md").read_text(encoding="utf-8")
    table = (root / "docs" / "table1.md").read_text(encoding="utf-8")
    assert script.with_table(readme, table) == readme  # `table1.py --readme README.md` would change nothing


def test_a_lost_state_adopts_the_committed_cells_and_refuses_another_run_s(tmp_path):
    import json

    script = load_script()
    committed = tmp_path / "table1.json"
    cell = {"name": "leading-S10-eta0", "n": 8, "distance": 3.5, "seconds_per_image": 0.1, "threads": [2],
            "anchor_n": 4, "distance_at_anchor_n": 5.5}
    calibration = {"seconds_per_image_step": 0.005, "min": 0.004, "max": 0.006}
    committed.write_text(json.dumps({"cells": [cell], "seed": 0, "n_images": 8, "ddpm_images": 4,
                                     "wall_time": calibration}))
    state = tmp_path / "state"
    (state / "results").mkdir(parents=True)
    assert script.adopt(state, committed, 8, 4, 0) == ["leading-S10-eta0"]
    adopted = json.loads((state / "results" / "leading-S10-eta0.json").read_text())
    assert (adopted["distance"], adopted["distance_at_anchor_n"]) == (3.5, 5.5)  # the images are gone: keep both
    assert json.loads((state / "calibration.json").read_text()) == calibration
    assert script.adopt(state, committed, 8, 4, 0) == []  # a cell in the state is not overwritten
    with pytest.raises(SystemExit, match="another seed or image count"):
        script.adopt(state, committed, 2000, 4, 0)
