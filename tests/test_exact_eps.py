"""The exact ε of a finite data set (tinyddim.exact_eps) and the ODE samplers (tinyddim.ode)."""

import math

import numpy as np
import pytest

from tinyddim import DDIMPipeline, DDIMScheduler
from tinyddim.exact_eps import ExactEps, nearest_rmse
from tinyddim.ode import evaluations, ode_sample


def scheduler(**kwargs):
    return DDIMScheduler(**{"beta_schedule": "squaredcos_cap_v2", "clip_sample": False, **kwargs})


def data_points(n, seed=0, shape=(1, 4, 4)):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def test_exact_eps_matches_a_naive_loop_over_the_data_points():
    data, sched = data_points(7), scheduler()
    model = ExactEps(data, sched.alpha_bar)
    x_t = np.random.default_rng(1).standard_normal((3, 1, 4, 4)).astype(np.float32)
    for t in (0, 100, 600, 999):
        a = sched.alpha_bar[t]
        for b in range(len(x_t)):  # log N(x_t; √ᾱ x_n, (1 − ᾱ) I) per point, ‖x_t‖² term and all
            log_lik = np.array([-np.sum((x_t[b].astype(np.float64) - math.sqrt(a) * x_n) ** 2) / (2 * (1 - a))
                                for x_n in data])
            w = np.exp(log_lik - log_lik.max())
            w /= w.sum()
            x0_mean = sum(w_n * x_n.astype(np.float64) for w_n, x_n in zip(w, data))
            eps = (x_t[b] - math.sqrt(a) * x0_mean) / math.sqrt(1 - a)
            np.testing.assert_allclose(model.posterior(x_t, t)[b], w, rtol=4e-5, atol=1e-12)  # measured 3.5e-6 at t=0
            np.testing.assert_allclose(model.x0_mean(x_t, t)[b], x0_mean, atol=1e-6)
            np.testing.assert_allclose(model(x_t, t)[b], eps, rtol=1e-5, atol=1e-5)


def test_exact_eps_of_one_point_is_the_true_noise_and_ddim_lands_on_the_point():
    x0, sched = data_points(1), scheduler()
    model = ExactEps(x0, sched.alpha_bar)
    noise = np.random.default_rng(2).standard_normal((4, 1, 4, 4)).astype(np.float32)
    for t in (10, 500, 990):
        x_t = sched.add_noise(np.repeat(x0, 4, 0), noise, np.full(4, t))
        np.testing.assert_allclose(model(x_t, t), noise, atol=2e-4)  # measured 3e-6 (float32 x_t at ᾱ → 0: 3e-5)
    pipe = DDIMPipeline(model, sched)
    for steps, eta in ((1, 0.0), (3, 1.0), (20, 0.5)):
        x = pipe(batch_size=4, generator=0, eta=eta, num_inference_steps=steps, output_type="np", progress=False).images
        np.testing.assert_allclose(x, np.repeat((x0 / 2 + 0.5).transpose(0, 2, 3, 1), 4, 0), atol=1e-5)


@pytest.mark.parametrize("n", [2, 5])
def test_exact_eps_is_the_score_of_the_noised_data_times_minus_sqrt_one_minus_alpha_bar(n):
    """Tweedie: E[ε | x_t] = −√(1 − ᾱ_t) ∇ log p_t(x_t), with ∇ by central differences of the mixture density."""
    data, sched = data_points(n, seed=3), scheduler()
    model = ExactEps(data, sched.alpha_bar)
    x_t = np.random.default_rng(4).standard_normal((1, 1, 4, 4))
    for t in (200, 700):
        a = sched.alpha_bar[t]

        def log_p(x):  # log of (1/N) Σ N(x; √ᾱ x_n, (1 − ᾱ) I), up to a constant
            logs = [-np.sum((x - math.sqrt(a) * x_n) ** 2) / (2 * (1 - a)) for x_n in data.reshape(n, -1).astype(np.float64)]
            return np.logaddexp.reduce(logs)

        h, grad = 1e-5, np.zeros(x_t.size)
        for i in range(x_t.size):
            step = np.zeros(x_t.size)
            step[i] = h
            grad[i] = (log_p(x_t.ravel() + step) - log_p(x_t.ravel() - step)).sum() / (2 * h)
        expected = -math.sqrt(1 - a) * grad.reshape(x_t.shape)
        np.testing.assert_allclose(model(x_t.astype(np.float32), t), expected, atol=1e-4)  # measured ~1e-7


def test_two_points_far_apart_get_the_posterior_of_the_nearer_one():
    data = np.stack([np.full((1, 2, 2), -1.0), np.full((1, 2, 2), 1.0)]).astype(np.float32)
    sched = scheduler()
    model = ExactEps(data, sched.alpha_bar)
    x_t = math.sqrt(sched.alpha_bar[50]) * data  # exactly the mean of each component
    w = model.posterior(x_t, 50)
    assert w[0, 0] > 1 - 1e-12 and w[1, 1] > 1 - 1e-12
    np.testing.assert_allclose(model.posterior(np.zeros((1, 1, 2, 2), np.float32), 50), [[0.5, 0.5]])  # midway


def test_ddim_with_exact_eps_reaches_the_data_with_enough_steps_and_the_mean_with_one():
    data, sched = data_points(6, seed=5), scheduler(timestep_spacing="trailing")
    pipe = DDIMPipeline(ExactEps(data, sched.alpha_bar), sched)
    latents = np.random.default_rng(6).standard_normal((16, 1, 4, 4)).astype(np.float32)
    one = pipe(latents=latents, num_inference_steps=1, output_type="np", progress=False).images
    # one step from t = 999 to ᾱ = 1 returns x̂_0 = E[x_0 | x_T], and at ᾱ_999 ≈ 0 that is about the data mean.
    # (Eq. 9 divides by √ᾱ_999 = 5e-5, which magnifies the float32 rounding of ε to about 1e-3.)
    posterior_mean = pipe.unet.x0_mean(latents, 999)
    np.testing.assert_allclose(one, (posterior_mean / 2 + 0.5).transpose(0, 2, 3, 1), atol=1e-2)  # measured 1.1e-3
    np.testing.assert_allclose(posterior_mean, np.broadcast_to(data.mean(0), latents.shape), atol=1e-2)  # measured 2e-3
    many = pipe(latents=latents, num_inference_steps=100, output_type="np", progress=False).images
    assert nearest_rmse(many, data.transpose(0, 2, 3, 1) / 2 + 0.5).max() < 1e-3
    assert nearest_rmse(one, data.transpose(0, 2, 3, 1) / 2 + 0.5).min() > 0.1


def test_nearest_rmse_matches_a_naive_loop():
    rng = np.random.default_rng(7)
    samples, data = rng.uniform(size=(4, 3, 3, 1)), rng.uniform(size=(9, 3, 3, 1))
    expected = [min(np.sqrt(np.mean((s - d) ** 2)) for d in data) for s in samples]
    np.testing.assert_allclose(nearest_rmse(samples, data), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="values each"):
        nearest_rmse(samples, data[:, :2])


def test_exact_eps_rejects_bad_input_in_one_line():
    sched = scheduler()
    with pytest.raises(ValueError, match="data must be"):
        ExactEps(np.zeros((3, 4, 4)), sched.alpha_bar)
    model = ExactEps(data_points(2), sched.alpha_bar)
    with pytest.raises(ValueError, match="x_t must be"):
        model(np.zeros((1, 1, 5, 5), np.float32), 3)
    with pytest.raises(ValueError, match="outside"):
        model(np.zeros((1, 1, 4, 4), np.float32), 1000)
    with pytest.raises(TypeError, match="one integer timestep"):
        model(np.zeros((1, 1, 4, 4), np.float32), np.array([1, 2]))


class GaussianData:
    """The exact ε for x_0 ~ N(0, I): ε(x_t, t) = √(1 − ᾱ_t) x_t; then the ODE of Eq. 14 keeps x fixed, x_0 = x_T."""

    def __init__(self, alpha_bar):
        self.alpha_bar, self.device, self.sample_shape = alpha_bar, "cpu", (1, 4, 4)

    def __call__(self, x, t):
        return math.sqrt(1 - self.alpha_bar[int(t)]) * x


def test_euler_ode_sampler_is_ddim_with_eta_zero_and_no_clipping():
    data, sched = data_points(5), scheduler()
    model = ExactEps(data, sched.alpha_bar)
    latents = np.random.default_rng(8).standard_normal((3, 1, 4, 4)).astype(np.float32)
    for steps in (1, 4, 10):
        expected = DDIMPipeline(model, sched)(latents=latents, num_inference_steps=steps, output_type="np",
                                              progress=False).images
        x0 = ode_sample(model, sched, latents, steps, order=1)
        np.testing.assert_allclose(np.clip(x0 / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1), expected, atol=1e-6)


def test_heun_is_second_order_on_gaussian_data_where_the_exact_flow_is_known():
    """With set_alpha_to_one=False and leading spacing the last step (t = 0 to ᾱ_0) is empty, so every step is Heun's.

    (With ᾱ = 1 past the end, the last step is Euler's and its error, of the order of 1 − ᾱ_{t_1} ∝ 1/S, takes over.)
    """
    sched = scheduler(beta_schedule="linear", set_alpha_to_one=False)
    model = GaussianData(sched.alpha_bar)
    latents = np.random.default_rng(9).standard_normal((2, 1, 4, 4))
    error = {(order, S): np.abs(ode_sample(model, sched, latents, S, order) - latents).max() / np.abs(latents).max()
             for order in (1, 2) for S in (20, 40, 80)}
    # measured: Euler 0.087, 0.045, 0.022 (halves with the step); Heun 0.011, 0.0026, 0.00060 (quarters)
    for S in (20, 40):
        assert 1.8 < error[1, S] / error[1, 2 * S] < 2.2
        assert 3.5 < error[2, S] / error[2, 2 * S] < 4.5
        assert error[2, S] < error[1, S] / 4
    assert evaluations(10, 1) == 10 and evaluations(10, 2) == 19
    with pytest.raises(ValueError, match="order must be"):
        ode_sample(model, sched, latents, 3, order=3)


def test_ode_sample_takes_its_own_timesteps_and_leaves_the_scheduler_alone():
    data, sched = data_points(4), scheduler()
    model = ExactEps(data, sched.alpha_bar)
    latents = np.random.default_rng(10).standard_normal((2, 1, 4, 4)).astype(np.float32)
    sched.set_timesteps(7)
    before = sched.timesteps.copy()
    given = ode_sample(model, sched, latents, order=1, timesteps=[900, 600, 300, 0])
    assert np.array_equal(sched.timesteps, before)
    x, x_at = latents, {}
    for t, t_prev in ((900, 600), (600, 300), (300, 0), (0, -1)):  # Eq. 13 by hand
        a_t, a_prev = sched.alpha_bar_at(t), sched.alpha_bar_at(t_prev)
        x = math.sqrt(a_prev) * (x / math.sqrt(a_t) + (math.sqrt((1 - a_prev) / a_prev) - math.sqrt((1 - a_t) / a_t))
                                 * model(x, t))
        x_at[t_prev] = x
    np.testing.assert_allclose(given, x, atol=1e-5)
    midway = ode_sample(model, sched, latents, order=1, timesteps=[900, 600], stop_at=300)
    np.testing.assert_allclose(midway, x_at[300], atol=1e-5)
    assert np.abs(ode_sample(model, sched, latents, order=2, timesteps=[900, 600], stop_at=300) - midway).max() > 1e-3
    with pytest.raises(ValueError, match="descend strictly"):
        ode_sample(model, sched, latents, timesteps=[300, 600])
