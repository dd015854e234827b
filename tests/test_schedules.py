"""Beta schedules, timestep lists, configs and errors shared by DDIMScheduler and DDPMScheduler."""

import json

import numpy as np
import pytest
import torch
import diffusers

from tinyddim.config import Config
from tinyddim.ddim import DDIMScheduler
from tinyddim.ddpm import DDPMScheduler
from tinyddim.schedules import dynamic_threshold, make_betas, make_timesteps, quadratic_timesteps

SCHEDULES = [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "linear", "rescale_betas_zero_snr": True},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
]


# ---- schedules ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", SCHEDULES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_betas_and_alpha_bar_match_diffusers_to_float32_rounding(config):
    ours, ref = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    # diffusers works in float32; its zero-SNR betas = 1 − ᾱ_t/ᾱ_{t−1} lose ~1e-6 to cancellation
    np.testing.assert_allclose(ours.betas, ref.betas.double().numpy(), rtol=2e-5, atol=3e-6)
    np.testing.assert_allclose(ours.alpha_bar, ref.alphas_cumprod.double().numpy(), rtol=2e-5, atol=1e-7)
    assert ours.betas.dtype == ours.alpha_bar.dtype == np.float64


def test_zero_snr_rescale_makes_last_alpha_bar_zero_and_keeps_the_first():
    plain, rescaled = make_betas(1000), make_betas(1000, rescale_betas_zero_snr=True)
    assert np.cumprod(1 - rescaled)[-1] == pytest.approx(0.0, abs=1e-15)
    assert np.cumprod(1 - rescaled)[0] == pytest.approx(np.cumprod(1 - plain)[0], rel=1e-12)


def test_trained_betas_override_the_named_schedule():
    betas = np.linspace(0.001, 0.05, 10)
    scheduler = DDIMScheduler(num_train_timesteps=10, trained_betas=betas, beta_schedule="scaled_linear")
    np.testing.assert_array_equal(scheduler.betas, betas)
    assert scheduler.config.trained_betas == betas.tolist()


def test_alpha_bar_is_the_cumulative_product_of_alphas():
    s = DDPMScheduler()
    np.testing.assert_allclose(s.alpha_bar, np.cumprod(1 - s.betas), rtol=1e-15)
    assert s.alphas_cumprod is s.alpha_bar


def test_alpha_bar_past_the_last_step_is_final_alpha():
    assert DDIMScheduler().alpha_bar_at(-1) == 1.0
    s = DDIMScheduler(set_alpha_to_one=False)
    assert s.alpha_bar_at(-1) == s.alpha_bar_at(0) == s.alpha_bar[0]
    assert DDPMScheduler().alpha_bar_at(-1) == 1.0


# ---- timesteps ---------------------------------------------------------------------------------------

def test_timesteps_follow_the_documented_examples():
    assert make_timesteps(1000, 50, "leading").tolist() == list(range(980, -1, -20))
    assert make_timesteps(1000, 50, "leading", steps_offset=1).tolist() == list(range(981, 0, -20))
    assert make_timesteps(1000, 50, "trailing").tolist() == list(range(999, 18, -20))
    assert make_timesteps(1000, 50, "linspace")[[0, 1, -1]].tolist() == [999, 979, 0]


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_timesteps_equal_diffusers_for_every_number_of_steps(spacing, offset):
    T = 1000
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    for S in range(1, T + (offset == 0)):
        ref.set_timesteps(S)
        ours = make_timesteps(T, S, spacing, offset)
        assert ours.dtype == np.int64 and len(ours) == S
        theirs = ref.timesteps.numpy()
        if len(theirs) == S + 1:  # diffusers' float arange overshoots: a stray −1 at the end
            assert spacing == "trailing" and theirs[-1] == -1
            theirs = theirs[:-1]
        np.testing.assert_array_equal(ours, theirs, err_msg=f"S={S}")


def test_diffusers_trailing_timesteps_gain_a_stray_minus_one_that_ours_do_not():
    ref = diffusers.DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(61)
    assert len(ref.timesteps) == 62 and ref.timesteps[-1] == -1
    assert make_timesteps(1000, 61, "trailing")[-1] == 15


def test_set_timesteps_sets_timesteps_and_num_inference_steps():
    s = DDIMScheduler(timestep_spacing="trailing")
    s.set_timesteps(np.int64(10))
    assert s.num_inference_steps == 10 and s.timesteps.tolist() == list(range(999, 0, -100))


def test_ddpm_without_set_timesteps_visits_all_training_steps():
    s = DDPMScheduler(num_train_timesteps=20)
    assert s.num_inference_steps is None
    assert s.timesteps.tolist() == list(range(19, -1, -1))
    assert [s.previous_timestep(t) for t in (19, 1, 0)] == [18, 0, -1]


def test_previous_timestep_is_the_next_listed_timestep():
    s = DDIMScheduler(timestep_spacing="trailing")
    s.set_timesteps(30)
    ts = s.timesteps.tolist()
    assert [s.previous_timestep(t) for t in ts] == ts[1:] + [-1]


# ---- custom and quadratic timesteps ------------------------------------------------------------------

def authors_quad_seq(S, T):
    """The DDIM authors' "quad" seq (ermongroup/ddim, runners/diffusion.py, sample_image), increasing."""
    seq = np.linspace(0, np.sqrt(T * 0.8), S) ** 2
    return [int(s) for s in list(seq)]


@pytest.mark.parametrize("T,S", [(1000, 2), (1000, 10), (1000, 20), (1000, 29), (1000, 30), (1000, 50),
                                 (1000, 100), (1000, 1000), (500, 20), (100, 10), (4000, 100)])
def test_quadratic_timesteps_are_the_authors_quad_seq_reversed_without_repeats(T, S):
    assert quadratic_timesteps(S, T).tolist() == sorted(set(authors_quad_seq(S, T)), reverse=True)
    assert quadratic_timesteps(S, T).dtype == np.int64


def test_quadratic_timesteps_repeat_small_timesteps_from_s_30_at_t_1000_and_drop_them():
    assert [len(quadratic_timesteps(S)) for S in (10, 29, 30, 100, 1000)] == [10, 29, 29, 96, 688]
    assert authors_quad_seq(30, 1000)[:3] == [0, 0, 3] and quadratic_timesteps(30).tolist()[-3:] == [8, 3, 0]
    assert authors_quad_seq(100, 1000)[:6] == [0, 0, 0, 0, 1, 2]
    assert quadratic_timesteps(10).tolist() == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]


@pytest.mark.parametrize("S", [10, 50, 30, 61])
def test_the_authors_uniform_rule_is_leading_spacing_when_s_divides_t_and_has_more_entries_otherwise(S):
    seq = list(range(0, 1000, 1000 // S))  # skip_type "uniform" in the authors' sample_image
    assert make_timesteps(1000, S, "leading").tolist() == sorted(seq[:S], reverse=True)
    assert (len(seq) == S) == (1000 % S == 0)


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
@pytest.mark.parametrize("spacing,S", [("leading", 10), ("trailing", 61), ("linspace", 50)])
def test_a_custom_list_equal_to_a_built_in_spacing_gives_the_very_same_steps(cls, spacing, S):
    built, custom = cls(timestep_spacing=spacing), cls()
    built.set_timesteps(S)
    custom.set_timesteps(timesteps=built.timesteps.tolist())
    assert custom.timesteps.tolist() == built.timesteps.tolist() and custom.timesteps.dtype == np.int64
    assert custom.num_inference_steps == S and custom.custom_timesteps and not built.custom_timesteps
    rng = np.random.default_rng(0)
    kwargs = {"eta": 1.0} if cls is DDIMScheduler else {}
    for t in built.timesteps:
        eps, x, noise = (rng.standard_normal((2, 3, 4, 4), dtype=np.float32) for _ in range(3))
        a = built.step(eps, t, x, variance_noise=noise, **kwargs).prev_sample
        b = custom.step(eps, t, x, variance_noise=noise, **kwargs).prev_sample
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("timesteps", [[9, 4, 0], np.array([9, 4, 0], np.int32), torch.tensor([9, 4, 0])],
                         ids=["list", "numpy", "torch"])
def test_custom_timesteps_are_taken_from_a_list_an_array_or_a_tensor(timesteps):
    s = DDIMScheduler(num_train_timesteps=10)
    s.set_timesteps(timesteps=timesteps)
    assert s.timesteps.tolist() == [9, 4, 0] and s.timesteps.dtype == np.int64
    assert [s.previous_timestep(t) for t in (9, 4, 0)] == [4, 0, -1]


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(timesteps=[100, 87, 50, 51, 0]), ValueError, r"strictly descending: entry 3 \(51\) does not come below"),
    (dict(timesteps=[5, 5]), ValueError, "strictly descending"),
    (dict(num_inference_steps=5, timesteps=[100, 0]), ValueError, "exactly one of .* got both"),
    (dict(), ValueError, "exactly one of num_inference_steps or timesteps, got neither"),
    (dict(timesteps=[1000, 3]), ValueError, "timestep 1000 is outside 0 … 999"),
    (dict(timesteps=[3, -1]), ValueError, "timestep -1 is outside 0 … 999"),
    (dict(timesteps=[]), ValueError, "non-empty 1-D"),
    (dict(timesteps=[[3, 1]]), ValueError, "non-empty 1-D"),
    (dict(timesteps=[3.0, 1.0]), TypeError, "timesteps must be integers, got float64"),
], ids=["rising", "repeat", "both", "neither", "too-large", "negative", "empty", "2-d", "floats"])
def test_bad_custom_timesteps_are_named(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls().set_timesteps(**kwargs)


# ---- config ------------------------------------------------------------------------------------------

def test_config_is_a_read_only_config_of_the_constructor_arguments():
    s = DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1)
    assert isinstance(s.config, Config)
    assert s.config.beta_schedule == "scaled_linear" and s.config["steps_offset"] == 1
    with pytest.raises(TypeError):
        s.config["steps_offset"] = 2
    assert s.init_noise_sigma == 1.0 and len(s) == 1000


def test_from_config_ignores_private_and_foreign_keys_so_ddpm_and_ddim_configs_interchange():
    ddpm = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", clip_sample=False)
    ddim = DDIMScheduler.from_config({"_class_name": "DDPMScheduler", "_diffusers_version": "0.1", **ddpm.config})
    assert ddim.config.beta_schedule == "squaredcos_cap_v2" and ddim.config.clip_sample is False
    assert "variance_type" not in ddim.config
    back = DDPMScheduler.from_config(DDIMScheduler(set_alpha_to_one=False, steps_offset=1).config)
    assert back.config.steps_offset == 1 and back.config.variance_type == "fixed_small"


def test_from_config_keywords_override_the_config():
    s = DDIMScheduler.from_config(DDIMScheduler().config, timestep_spacing="trailing")
    assert s.config.timestep_spacing == "trailing"


def test_from_pretrained_reads_a_folder_a_pipeline_folder_and_a_subfolder(tmp_path):
    diffusers.DDPMScheduler(beta_schedule="scaled_linear", steps_offset=1).save_config(tmp_path / "pipe" / "scheduler")
    for args in [(tmp_path / "pipe",), (tmp_path / "pipe", "scheduler"), (tmp_path / "pipe" / "scheduler",)]:
        s = DDIMScheduler.from_pretrained(str(args[0]), *args[1:])
        assert s.config.beta_schedule == "scaled_linear" and s.config.steps_offset == 1


def test_save_config_round_trips_and_diffusers_reads_it(tmp_path):
    ours = DDIMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", set_alpha_to_one=False)
    ours.save_config(str(tmp_path))
    assert DDIMScheduler.from_pretrained(str(tmp_path)).config == ours.config
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"
    ref = diffusers.DDIMScheduler.from_pretrained(str(tmp_path))
    assert ref.config.timestep_spacing == "trailing" and ref.config.set_alpha_to_one is False
    assert [p.name for p in tmp_path.iterdir()] == ["scheduler_config.json"]  # no temp file left


# ---- add_noise ---------------------------------------------------------------------------------------

def test_add_noise_matches_diffusers_with_one_timestep_per_example():
    rng = np.random.default_rng(0)
    x0, noise = (rng.standard_normal((4, 3, 8, 8), dtype=np.float32) for _ in range(2))
    t = np.array([0, 10, 500, 999])
    for config in SCHEDULES[:3]:
        ours = DDPMScheduler(**config).add_noise(x0, noise, t)
        ref = diffusers.DDPMScheduler(**config).add_noise(*map(torch.from_numpy, (x0, noise, t)))
        assert ours.dtype == np.float32
        assert np.abs(ours - ref.numpy()).max() < 2e-5  # diffusers rounds ᾱ to float32


@pytest.mark.parametrize("scale", [0.5, 1.5, 4.0])
def test_dynamic_threshold_matches_diffusers_below_and_above_one(scale):
    """s = clip(quantile of |x̂_0|, 1, max): below 1 nothing changes; above, x̂_0 is clipped to ±s and divided by s."""
    x0 = scale * np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    ref = diffusers.DDIMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0)
    theirs = ref._threshold_sample(torch.from_numpy(x0)).numpy()
    ours = dynamic_threshold(x0, ratio=0.9, max_value=2.0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)  # measured 0: the same float32 quantile and division
    if scale < 1:
        np.testing.assert_array_equal(ours, x0)


def test_add_noise_with_one_int_timestep_broadcasts():
    s, x0 = DDIMScheduler(), np.ones((2, 3, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(s.add_noise(x0, 0 * x0, 500), np.sqrt(s.alpha_bar[500]) * x0, rtol=1e-6)


# ---- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,key,value", [
    (DDIMScheduler, "beta_schedule", "cosine"),
    (DDIMScheduler, "prediction_type", "eps"),
    (DDIMScheduler, "timestep_spacing", "uniform"),
    (DDPMScheduler, "variance_type", "fixed"),
    (DDPMScheduler, "beta_schedule", "sigmoid"),
])
def test_unknown_option_values_raise_naming_the_option_and_the_choices(cls, key, value):
    with pytest.raises(ValueError, match=rf"{key}='{value}'.*expected one of \["):
        cls(**{key: value})


@pytest.mark.parametrize("n,error,match", [
    (0, ValueError, "num_inference_steps=0"),
    (1001, ValueError, "num_inference_steps=1001.*num_train_timesteps=1000"),
    (2.5, TypeError, "num_inference_steps must be an int, got float"),
    ("10", TypeError, "got str"),
    (True, TypeError, "got bool"),
])
def test_set_timesteps_rejects_bad_step_counts(n, error, match):
    with pytest.raises(error, match=match):
        DDIMScheduler().set_timesteps(n)


def test_steps_offset_past_the_last_training_step_is_an_error():
    with pytest.raises(ValueError, match="steps_offset=1 puts timestep 1000"):
        DDIMScheduler(steps_offset=1).set_timesteps(1000)


def test_trained_betas_of_the_wrong_length_are_an_error():
    with pytest.raises(ValueError, match=r"trained_betas has shape \(5,\); expected \(1000,\)"):
        DDIMScheduler(trained_betas=[0.1] * 5)


def test_num_train_timesteps_must_be_a_positive_int():
    with pytest.raises(ValueError, match="num_train_timesteps must be a positive int"):
        DDPMScheduler(num_train_timesteps=0)


def test_from_config_rejects_a_non_dict_and_unknown_keywords():
    with pytest.raises(TypeError, match="expects a dict, got str"):
        DDIMScheduler.from_config("scheduler_config.json")
    with pytest.raises(TypeError, match="variance_type"):
        DDIMScheduler.from_config({}, variance_type="fixed_small")


def test_from_pretrained_reports_invalid_json_naming_the_file(tmp_path):
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON in .*scheduler_config.json"):
        DDIMScheduler.from_pretrained(str(tmp_path))
    (tmp_path / "scheduler_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        DDIMScheduler.from_pretrained(str(tmp_path))


def test_from_pretrained_reports_a_missing_folder_subfolder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        DDIMScheduler.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no folder 'scheduler'"):
        DDIMScheduler.from_pretrained(str(tmp_path), subfolder="scheduler")
    with pytest.raises(FileNotFoundError, match="no scheduler config in .*scheduler_config.json"):
        DDIMScheduler.from_pretrained(str(tmp_path))


def test_add_noise_rejects_timesteps_out_of_range():
    x = np.zeros((2, 1, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="timesteps must be ints in 0 … 999"):
        DDIMScheduler().add_noise(x, x, np.array([0, 1000]))
    with pytest.raises(ValueError, match="timesteps must be ints"):
        DDIMScheduler().add_noise(x, x, np.array([0.5, 1.0]))
