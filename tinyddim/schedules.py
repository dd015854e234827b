"""Noise schedules, timestep lists and the scheduler base class shared by DDIM and DDPM.

Papers: DDPM, Ho, Jain & Abbeel 2020 (arXiv 2006.11239); DDIM, Song, Meng & Ermon 2020 (arXiv 2010.02502);
the cosine schedule, Nichol & Dhariwal 2021 (arXiv 2102.09672); zero terminal SNR and timestep spacing,
Lin et al. 2023 (arXiv 2305.08891).

Notation (code name -> symbol): the one list for the whole package; ddim.py and ddpm.py use these names
    betas          β_t               the forward-process variances, t = 0 … T−1 (0-based, as diffusers)
    alphas         α_t = 1 − β_t     (DDPM's α_t)
    alpha_bar      ᾱ_t = ∏_{s≤t} α_s DDPM's ᾱ_t. The DDIM paper writes α_t for this same product (mind the
                                     trap); diffusers calls it alphas_cumprod. We write alpha_bar everywhere.
    alpha_bar_prev ᾱ_{t_prev}        the DDIM paper's α_{t−1}, or α_{τ_{i−1}} when skipping steps
    final_alpha_cumprod              ᾱ at t_prev = −1, past the last step: 1.0, or ᾱ_0 for DDIM with
                                     set_alpha_to_one=False
    T              num_train_timesteps
    S              num_inference_steps, the length of `.timesteps`
    t, t_prev      a timestep and the one the sampler steps to (the next entry of `.timesteps`, −1 after
                   the last)
    x_t, x_prev    x_t and x_{t_prev} (the paper's x_{t−1}, or x_{τ_{i−1}})
    eps            ε_θ(x_t, t), the model's noise prediction
    noise          ε_t ~ N(0, I) (DDPM's z), fresh noise added when σ_t > 0; kept apart from eps
    x0_pred        x̂_0 = f_θ(x_t), the "predicted x_0" (DDIM Eq. 9)
    dir_xt         √(1 − ᾱ_prev − σ_t²) · ε_θ, the "direction pointing to x_t" (DDIM Eq. 12)
    sigma, eta     σ_t, the standard deviation of the added noise; DDIM's σ_t(η) of Eq. 16, where η = 0 is
                   DDIM and η = 1 is DDPM's posterior variance
    beta_t         β_t = 1 − ᾱ_t/ᾱ_prev, the β of the whole jump t -> t_prev (one step's β without skipping)
    beta_tilde     β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t) · β_t, DDPM's posterior variance (DDPM Eq. 7)

All schedule math is float64 NumPy on the host; a step only ever sees Python floats.

The previous timestep (one rule for both samplers)
    t_prev is always the entry after t in `.timesteps`, and −1 after the last entry, where ᾱ is
    `final_alpha` (`alpha_bar_at` owns that rule). diffusers' DDPMScheduler does the same, but its
    DDIMScheduler uses t_prev = t − T // S, which is a different timestep for "trailing" spacing when S
    does not divide T and for "linspace" spacing unless S = T. Where the two agree, our steps equal
    diffusers'; where they differ, ours is the step to the timestep the sampler actually visits next.
    The DDIM authors' sampler steps the same way (its seq_next = [−1] + seq[:−1], over seq reversed),
    and so does a custom list given as `set_timesteps(timesteps=...)`.
"""

import inspect
import json
import math
import operator
import os

import numpy as np

from .backend import as_generator, get_array_module, randn, to_numpy
from .config import build_config, find_file, read_json, write_atomic

CONFIG_NAME = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


# ---- β schedules -> betas (float64, host) --------------------------------------------------------

def cosine_betas(num_train_timesteps, max_beta=0.999, s=0.008):
    """β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta), ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2).   (Nichol & Dhariwal, Eq. 17)

    The "squaredcos_cap_v2" schedule.
    """
    t = np.arange(num_train_timesteps + 1) / num_train_timesteps      # (T+1,) t/T = 0 … 1
    alpha_bar = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def rescale_zero_terminal_snr(betas):
    """Shift and scale √ᾱ so that ᾱ_{T−1} = 0 and ᾱ_0 is unchanged.   (Lin et al. 2023, Algorithm 1)"""
    sqrt_alpha_bar = np.sqrt(np.cumprod(1 - betas))
    first, last = sqrt_alpha_bar[0], sqrt_alpha_bar[-1]
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])  # undo the cumprod
    return 1 - alphas


def make_betas(num_train_timesteps, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
               trained_betas=None, rescale_betas_zero_snr=False):
    """β_0 … β_{T−1} as float64, from a named schedule or from `trained_betas` (which wins)."""
    T = num_train_timesteps
    if trained_betas is not None:
        betas = np.array(trained_betas, dtype=np.float64)
        if betas.shape != (T,):
            raise ValueError(f"trained_betas has shape {betas.shape}; expected ({T},) for num_train_timesteps={T}")
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, T)
    elif beta_schedule == "scaled_linear":  # linear in √β (Stable Diffusion)
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = cosine_betas(T)
    else:
        raise ValueError(f"unsupported beta_schedule={beta_schedule!r}; expected one of {list(BETA_SCHEDULES)}")
    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


# ---- timestep lists -------------------------------------------------------------------------------

def check_num_inference_steps(num_inference_steps, num_train_timesteps):
    """`num_inference_steps` as an int in 1 … T, or a clear error."""
    if isinstance(num_inference_steps, bool) or not hasattr(num_inference_steps, "__index__"):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    S = operator.index(num_inference_steps)
    if not 1 <= S <= num_train_timesteps:
        raise ValueError(f"num_inference_steps={S} must be between 1 and num_train_timesteps={num_train_timesteps}")
    return S


def make_timesteps(num_train_timesteps, num_inference_steps, timestep_spacing="leading", steps_offset=0):
    """The S timesteps a sampler visits, descending, int64; the same lists as diffusers.

    leading  (T=1000, S=50): [980, 960, …, 0] + steps_offset
    trailing (T=1000, S=50): [999, 979, …, 19]
    linspace (T=1000, S=50): round(linspace(0, 999, 50)) reversed: [999, 979, …, 20, 0]
    """
    T, S = num_train_timesteps, check_num_inference_steps(num_inference_steps, num_train_timesteps)
    if timestep_spacing == "leading":
        timesteps = np.arange(S)[::-1] * (T // S) + steps_offset
    elif timestep_spacing == "trailing":
        # arange(T, 0, −T/S) can hold S + 1 floats by rounding (e.g. S=61), giving diffusers a stray −1; keep S
        timesteps = np.round(np.arange(T, 0, -T / S))[:S] - 1
    elif timestep_spacing == "linspace":
        timesteps = np.round(np.linspace(0, T - 1, S))[::-1]
    else:
        raise ValueError(f"unsupported timestep_spacing={timestep_spacing!r}; "
                         f"expected one of {list(TIMESTEP_SPACINGS)}")
    timesteps = timesteps.astype(np.int64)
    if timesteps.max() >= T:
        raise ValueError(f"steps_offset={steps_offset} puts timestep {timesteps.max()} past num_train_timesteps={T}")
    return timesteps


def quadratic_timesteps(num_inference_steps, num_train_timesteps=1000):
    """The DDIM paper's "quadratic" timesteps τ_i ≈ c·i², as the authors' code builds them; descending, int64.

    The authors' sampler (skip_type "quad") takes seq = int(linspace(0, √(0.8 T), S)²), increasing from 0
    to 0.8 T, and steps from each entry to the one below it (−1 below the first): our t -> t_prev rule
    on this list reversed. Casting to int repeats small timesteps once S − 1 > √(0.8 T) (S ≥ 30 for
    T = 1000: 0, 0, 3, …); a step from t to the same t is a no-op there (ᾱ_t = ᾱ_prev), so the repeats
    are dropped and the list can be shorter than S (96 entries for S = 100, T = 1000).

    The authors' "uniform" rule, seq = range(0, T, T // S), is our "leading" spacing (steps_offset=0)
    when S divides T; otherwise it has more than S entries and ours are its S smallest (T = 1000, S = 30:
    theirs end at 990, ours at 957).
    """
    T, S = num_train_timesteps, check_num_inference_steps(num_inference_steps, num_train_timesteps)
    seq = (np.linspace(0, math.sqrt(0.8 * T), S) ** 2).astype(np.int64)  # (S,) increasing, truncated as int()
    return np.unique(seq)[::-1].copy()                                    # descending, repeats removed


def check_timesteps(timesteps, num_train_timesteps):
    """A custom timestep list as int64 (S,): integers in 0 … T−1, strictly descending, or a clear error.

    The ValueErrors are those diffusers' DDPMScheduler raises; the list is the visit order, and each
    step goes to the next entry (−1 after the last).
    """
    T = num_train_timesteps
    array = np.asarray(to_numpy(timesteps))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D list, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"timesteps must be integers, got {array.dtype} values {array[:3].tolist()}")
    rising = np.flatnonzero(np.diff(array) >= 0)
    if rising.size:
        i = int(rising[0])
        raise ValueError(f"timesteps must be strictly descending: entry {i + 1} ({array[i + 1]}) "
                         f"does not come below entry {i} ({array[i]})")
    if array[0] >= T or array[-1] < 0:
        bad = array[0] if array[0] >= T else array[-1]
        raise ValueError(f"timestep {bad} is outside 0 … {T - 1} (num_train_timesteps={T})")
    return array.astype(np.int64)


def set_steps(scheduler, num_inference_steps, timesteps=None):
    """`scheduler.set_timesteps` from a pipeline's keywords: a given `timesteps` list wins, and
    `num_inference_steps` is then ignored (as in diffusers' pipelines that take `timesteps`)."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps)


# ---- model output -> x̂_0, ε̂ and the options around it ---------------------------------------------

def x0_and_eps(model_output, x_t, alpha_bar_t, prediction_type):
    """(x̂_0, ε̂) from the model output, for each prediction type; x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
    a, b = math.sqrt(alpha_bar_t), math.sqrt(1 - alpha_bar_t)
    if prediction_type == "epsilon":  # DDIM Eq. 9
        if a == 0:
            raise ValueError("prediction_type='epsilon' cannot give x̂_0 at ᾱ_t = 0 (zero terminal SNR); "
                             "use v_prediction or skip t = T−1")
        return (x_t - b * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / b
    if prediction_type == "v_prediction":  # v = √ᾱ_t ε − √(1 − ᾱ_t) x_0   (Salimans & Ho 2022)
        return a * x_t - b * model_output, a * model_output + b * x_t
    raise ValueError(f"unsupported prediction_type={prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")


def eps_from_x0(x_t, x0_pred, alpha_bar_t):
    """ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t), the ε that x̂_0 implies."""
    return (x_t - math.sqrt(alpha_bar_t) * x0_pred) / math.sqrt(1 - alpha_bar_t)


def dynamic_threshold(x0_pred, ratio=0.995, max_value=1.0):
    """Clip each example to ±s and divide by s, s = clip(ratio-quantile of |x̂_0|, 1, max_value).

    Dynamic thresholding from Imagen, Saharia et al. 2022 (arXiv 2205.11487).
    """
    xp = get_array_module(x0_pred)
    flat = x0_pred.reshape(x0_pred.shape[0], -1)          # (B, C·H·W)
    s = xp.quantile(abs(flat), ratio, axis=1)             # (B,)
    s = s.clip(1, max_value)[:, None]                     # (B, 1)
    return (flat.clip(-s, s) / s).reshape(x0_pred.shape).astype(x0_pred.dtype)


# ---- the scheduler base class ---------------------------------------------------------------------

class Scheduler:
    """What DDIMScheduler and DDPMScheduler share: config, the ᾱ table, timesteps, add_noise.

    A subclass lists its keyword arguments (diffusers' names and defaults) in `__init__` and calls
    `self._setup(locals())`. `.config` is a read-only `Config` of exactly those arguments.
    """

    init_noise_sigma = 1.0
    order = 1
    choices = {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES,
               "timestep_spacing": TIMESTEP_SPACINGS}

    def _setup(self, arguments):
        arguments = {key: value for key, value in arguments.items() if key not in ("self", "__class__")}
        if arguments.get("trained_betas") is not None:
            arguments["trained_betas"] = [float(beta) for beta in to_numpy(arguments["trained_betas"]).ravel()]
        T = arguments["num_train_timesteps"]
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {T!r}")
        self.config = build_config(arguments, {}, self.choices, owner=type(self).__name__)
        c = self.config
        self.betas = make_betas(T, c.beta_start, c.beta_end, c.beta_schedule, c.trained_betas,
                                c.rescale_betas_zero_snr)   # (T,) float64
        self.alphas = 1 - self.betas
        self.alpha_bar = np.cumprod(self.alphas)            # (T,) ᾱ_t
        self.alphas_cumprod = self.alpha_bar                # diffusers' name
        self.final_alpha_cumprod = 1.0                      # ᾱ at t_prev = −1 (DDIM may choose ᾱ_0)
        self.num_inference_steps = None
        self.custom_timesteps = False
        self._use_timesteps(np.arange(T, dtype=np.int64)[::-1].copy())

    # -- config in and out --

    @classmethod
    def from_config(cls, config, **kwargs):
        """A scheduler from a config dict; keys this class does not take (`_class_name`, ...) are ignored."""
        if not isinstance(config, dict):
            raise TypeError(f"from_config expects a dict, got {type(config).__name__}")
        known = inspect.signature(cls.__init__).parameters
        return cls(**{**{key: value for key, value in config.items() if key in known}, **kwargs})

    @classmethod
    def from_pretrained(cls, path, subfolder=None, **kwargs):
        """Read `scheduler_config.json` from folder `path`, `path/subfolder`, or `path/scheduler` (a pipeline)."""
        in_pipeline = os.path.join(path, "scheduler", CONFIG_NAME)
        if subfolder is None and not os.path.isfile(os.path.join(path, CONFIG_NAME)) and os.path.isfile(in_pipeline):
            subfolder = "scheduler"
        return cls.from_config(read_json(find_file(path, [CONFIG_NAME], subfolder, "scheduler config")), **kwargs)

    def save_config(self, folder):
        """Write `folder/scheduler_config.json` (atomically), readable by us and by diffusers."""
        os.makedirs(folder, exist_ok=True)
        text = json.dumps({"_class_name": type(self).__name__, **self.config}, indent=2,
                          default=lambda value: value.item())  # NumPy scalars

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)

        write_atomic(os.path.join(folder, CONFIG_NAME), write)

    def __len__(self):
        return self.config.num_train_timesteps

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "trained_betas")
        return f"{type(self).__name__}({options})"

    # -- timesteps --

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        """Choose the timesteps to visit (`.timesteps`, int64, host). `device` is accepted and unused.

        Give either `num_inference_steps` S (the configured spacing makes the list) or `timesteps`, a
        custom list in visit order (strictly descending, in 0 … T−1, e.g. `quadratic_timesteps(S)`).
        """
        c = self.config
        T = c.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps needs exactly one of num_inference_steps or timesteps, got "
                             + ("both" if timesteps is not None else "neither"))
        self.custom_timesteps = timesteps is not None
        if self.custom_timesteps:
            self._use_timesteps(check_timesteps(timesteps, T))
        else:
            self._use_timesteps(make_timesteps(T, num_inference_steps, c.timestep_spacing, c.steps_offset))
        self.num_inference_steps = len(self.timesteps)

    def _use_timesteps(self, timesteps):
        self.timesteps = timesteps                                                       # (S,) int64
        self._t_prev = dict(zip(timesteps.tolist(), timesteps[1:].tolist() + [-1]))      # t -> t_prev

    def previous_timestep(self, timestep):
        """t_prev: the entry after t in `.timesteps`, −1 after the last one."""
        return self._t_and_prev(timestep)[1]

    def _t_and_prev(self, timestep):
        """(t, t_prev) as ints; a clear error for a timestep this scheduler will not visit."""
        t = operator.index(timestep) if hasattr(timestep, "__index__") else None
        if t not in self._t_prev:
            shown = ", ".join(map(str, self.timesteps[:3].tolist()))
            raise ValueError(f"timestep {timestep!r} is not in this scheduler's timesteps [{shown}, …, "
                             f"{self.timesteps[-1]}]; step through .timesteps after set_timesteps")
        return t, self._t_prev[t]

    def alpha_bar_at(self, t):
        """ᾱ_t as a Python float; `final_alpha_cumprod` at t = −1, the step past the end."""
        return float(self.alpha_bar[t]) if t >= 0 else self.final_alpha_cumprod

    # -- pieces of a step --

    def scale_model_input(self, sample, timestep=None):
        """The model input at t: `sample` unchanged (DDIM and DDPM do not scale it)."""
        return sample

    def _clip_x0(self, x0_pred):
        """The clipping option around the step: dynamic thresholding, plain clipping, or none."""
        c = self.config
        if c.thresholding:
            return dynamic_threshold(x0_pred, c.dynamic_thresholding_ratio, c.sample_max_value)
        if c.clip_sample:
            return x0_pred.clip(-c.clip_sample_range, c.clip_sample_range)
        return x0_pred

    @staticmethod
    def _check_generator(generator):
        """A TypeError now, not only when noise is first needed, for a generator we cannot use."""
        if generator is not None:
            as_generator(generator)

    @staticmethod
    def _noise(sample, generator, variance_noise):
        """ε_t ~ N(0, I) shaped like `sample`: `variance_noise`, or drawn on the host from `generator`."""
        if variance_noise is None:
            return randn(generator, tuple(sample.shape), like=sample)
        if generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if tuple(variance_noise.shape) != tuple(sample.shape):
            raise ValueError(f"variance_noise has shape {tuple(variance_noise.shape)}; "
                             f"expected the sample's shape {tuple(sample.shape)}")
        return variance_noise

    # -- the forward process --

    def add_noise(self, original_samples, noise, timesteps):
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with one t per example or one for all.   (DDPM Eq. 4)"""
        xp = get_array_module(original_samples)
        t = np.asarray(to_numpy(timesteps))
        if t.dtype.kind not in "iu" or t.size and (t.min() < 0 or t.max() >= len(self)):
            raise ValueError(f"timesteps must be ints in 0 … {len(self) - 1}, got {t!r}")
        shape = t.shape + (1,) * (original_samples.ndim - t.ndim)            # (B, 1, 1, 1)
        alpha_bar = self.alpha_bar[t].reshape(shape)
        a = xp.asarray(np.sqrt(alpha_bar), dtype=original_samples.dtype)
        b = xp.asarray(np.sqrt(1 - alpha_bar), dtype=original_samples.dtype)
        return a * original_samples + b * noise
