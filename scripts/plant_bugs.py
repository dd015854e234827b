"""Plant bugs in a copy of the package, one at a time, and see whether the fast tests catch each.

    python scripts/plant_bugs.py                    # every bug; prints each result, then the survivors
    python scripts/plant_bugs.py --only 3 17        # some bugs, by number
    python scripts/plant_bugs.py --list             # the bugs, not run

Each bug is (file, old text, new text, what it breaks). For each, the repository (without .git, the
notebooks and the docs pictures) is copied to a temporary folder, the old text replaced once (it must
occur exactly once), and pytest runs there on the test files that guard that module (`GUARDS`; with
--all-tests, the rest of the fast suite after them, never the notebooks), stopping at the first failure
(`-x`). A bug the tests pass is a survivor. Run it once per change of the math (ddim, ddpm, schedules,
inversion, explore, nn, fastops, unet); it takes a minute or two per bug.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the test files that guard it (run alone by default; first, before the rest, with --all-tests)
GUARDS = {
    "ddim.py": ["test_ddim.py", "test_pipelines.py", "test_explore.py"],
    "ddpm.py": ["test_ddpm.py", "test_pipelines.py", "test_explore.py"],
    "schedules.py": ["test_schedules.py", "test_ddim.py", "test_ddpm.py"],
    "inversion.py": ["test_inversion.py", "test_explore.py"],
    "explore.py": ["test_explore.py"],
    "nn.py": ["test_nn.py", "test_unet.py"],
    "fastops.py": ["test_nn.py", "test_unet.py"],
    "unet.py": ["test_unet.py", "test_pipelines.py"],
}

BUGS = [
    # ---- ddim.py ----
    ("ddim.py", "return eta * math.sqrt((1 - alpha_bar_prev)", "return math.sqrt((1 - alpha_bar_prev)",
     "σ_t ignores η (Eq. 16 without η)"),
    ("ddim.py", "dir_xt_sq = 1 - alpha_bar_prev - sigma**2", "dir_xt_sq = 1 - alpha_bar_prev",
     "direction term ignores σ_t²"),
    ("ddim.py", "x_prev = x_prev + sigma * noise ", "x_prev = x_prev + 0.99 * sigma * noise ",
     "noise term 1% too small"),
    ("ddim.py", "eps = eps_from_x0(sample, x0_pred, alpha_bar_t)", "eps = eps",
     "use_clipped_model_output ignored"),
    ("ddim.py", "else float(self.alpha_bar[0])", "else float(self.alpha_bar[1])",
     "set_alpha_to_one=False takes ᾱ_1 instead of ᾱ_0"),
    # ---- ddpm.py ----
    ("ddpm.py", "if kind in (\"fixed_large\", \"fixed_large_log\"):\n            return math.sqrt(beta_t)",
     "if kind in (\"fixed_large\", \"fixed_large_log\"):\n            return math.sqrt(beta_tilde)",
     "fixed_large uses β̃_t (σ̂ has the small variance)"),
    ("ddpm.py", "coef_xt = math.sqrt(1 - beta_t) * (1 - alpha_bar_prev)",
     "coef_xt = (1 - beta_t) * (1 - alpha_bar_prev)", "μ̃_t: α_t instead of √α_t"),
    ("ddpm.py", "        if t > 0:\n", "        if t >= 0:\n", "DDPM adds noise at t = 0"),
    ("ddpm.py", "frac = (predicted_variance + 1) / 2", "frac = (predicted_variance + 1) / 2.2",
     "learned_range interpolation off"),
    # ---- schedules.py ----
    ("schedules.py", "timesteps = np.arange(S)[::-1] * (T // S) + steps_offset",
     "timesteps = np.arange(S)[::-1] * (T // S) + steps_offset + (S > 1)", "leading timesteps off by one"),
    ("schedules.py", "timesteps[1:].tolist() + [-1]))", "timesteps[1:].tolist() + [0]))",
     "the last step lands on ᾱ_0, not the final ᾱ"),
    ("schedules.py", "def cosine_betas(num_train_timesteps, max_beta=0.999, s=0.008)",
     "def cosine_betas(num_train_timesteps, max_beta=0.999, s=0.009)", "cosine schedule offset s wrong"),
    ("schedules.py", "return a * x_t - b * model_output, a * model_output + b * x_t",
     "return a * x_t - b * model_output, a * model_output - b * x_t", "v-prediction ε has the wrong sign"),
    ("schedules.py", "s = s.clip(1, max_value)[:, None]", "s = s.clip(0.5, max_value)[:, None]",
     "dynamic thresholding floor 0.5 instead of 1"),
    # ---- inversion.py ----
    ("inversion.py", "model_output = unet(x, t if t_prev < 0 else t_prev)", "model_output = unet(x, t)",
     "inversion evaluates ε_θ at the step it climbs to"),
    ("inversion.py", "model_output = unet(x, t if t_prev < 0 else t_prev)",
     "model_output = unet(x, 0 if t_prev < 0 else t_prev)", "inversion's first step evaluates ε_θ at t = 0"),
    ("inversion.py", "scheduler.config.prediction_type)", "\"epsilon\")", "inversion ignores prediction_type"),
    ("inversion.py", "climb = scheduler.timesteps[::-1].tolist()", "climb = (scheduler.timesteps[::-1] + 1).tolist()",
     "inversion climbs timesteps one too high"),
    # ---- explore.py ----
    ("explore.py", "latents=latents, eta=eta, generator=seed + 1", "latents=latents, eta=0.0, generator=seed + 1",
     "eta_sweep ignores η"),
    ("explore.py", "\"variance_type\": \"fixed_large\"", "\"variance_type\": \"fixed_small\"",
     "σ̂ row uses the small variance β̃_t"),
    ("explore.py", "ddpm(batch_size=batch_size, latents=latents, generator=seed + 1",
     "ddpm(batch_size=batch_size, latents=-latents, generator=seed + 1", "σ̂ row from another x_T"),
    ("explore.py", "weights = [(math.sin((1 - a) * theta) / math.sin(theta), math.sin(a * theta) / math.sin(theta))",
     "weights = [(math.cos(a * theta), math.sin(a * theta))", "slerp weights for unit latents only"),
    # ---- nn.py ----
    ("nn.py", "xp.sqrt(var + eps)", "xp.sqrt(var)", "group_norm ignores ε"),
    ("nn.py", "var = xp.einsum(\"bgi,bgi->bg\", centered, centered) / centered.shape[-1]",
     "var = xp.einsum(\"bgi,bgi->bg\", centered, centered) / (centered.shape[-1] - 1)",
     "group_norm uses the unbiased variance"),
    ("nn.py", "np.float32(half - freq_shift)", "np.float32(half - freq_shift + 0.5)",
     "timestep embedding frequencies off"),
    # ---- fastops.py ----
    ("fastops.py", "np.subtract(d[1], d[3], out=rows[3])", "np.subtract(d[3], d[1], out=rows[3])",
     "Winograd input transform: a sign flipped"),
    ("fastops.py", "[0.5, -0.5, 0.5], [0, 0, 1]]", "[0.5, -0.5, 0.5], [0, 0, 0.99]]",
     "Winograd kernel transform G off by 1%"),
    ("fastops.py", "out[:, :, :, 0] = out[:, :, :, -1] = 0", "out[:, :, :, 0] = 0",
     "Winograd right padding column left uninitialised"),
    ("fastops.py", "y += z[:, i, j, :, i : i + out_h, j : j + out_w]",
     "y += z[:, i, j, :, j : j + out_h, i : i + out_w]", "few-output conv: taps transposed"),
    # ---- unet.py ----
    ("unet.py", "* (1 + scale) + shift", "* scale + shift", "scale_shift norm without the 1 +"),
    ("unet.py", "return (out + x) / output_scale", "return out + x", "attention ignores mid_block_scale_factor"),
    ("unet.py", "temb = linear(silu(temb), **p[\"time_emb_proj\"])", "temb = linear(temb, **p[\"time_emb_proj\"])",
     "resnet time projection without SiLU"),
]


def copy_repo(dst):
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "notebooks", "docs",
                                    "*.egg-info")
    shutil.copytree(ROOT, dst, ignore=ignore)


def plant(folder, file, old, new):
    path = Path(folder) / "tinyddim" / file
    text = path.read_text()
    if text.count(old) != 1:
        raise ValueError(f"{file}: the old text occurs {text.count(old)} times, expected once: {old!r}")
    path.write_text(text.replace(old, new))


def test_files(module, all_tests=False):
    tests = sorted(p.name for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_notebooks.py")
    first = [name for name in GUARDS.get(module, []) if name in tests]
    rest = [name for name in tests if name not in first] if all_tests else []
    return [f"tests/{name}" for name in first + rest]


def run_bug(number, bug, timeout, all_tests=False):
    file, old, new, what = bug
    with tempfile.TemporaryDirectory(prefix="plant_bug_") as tmp:
        folder = os.path.join(tmp, "repo")
        copy_repo(folder)
        plant(folder, file, old, new)
        env = {**os.environ, "PYTHONPATH": folder, "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_files(file, all_tests)]
        start = time.time()
        try:
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.time() - start, ""
        lines = done.stdout.strip().splitlines()
        failed = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))][:1]
        tail = " ".join(failed + lines[-1:]) if lines else done.stderr.strip()[-200:]
        return ("survived" if done.returncode == 0 else "killed"), time.time() - start, tail


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="*", help="bug numbers to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per bug (default 600)")
    parser.add_argument("--all-tests", action="store_true", help="after the guarding files, the rest of the fast suite")
    args = parser.parse_args()
    chosen = args.only or range(1, len(BUGS) + 1)
    if args.list:
        for number in chosen:
            print(f"{number:2d}  {BUGS[number - 1][0]:13s} {BUGS[number - 1][3]}")
        return 0
    for number in chosen:  # check every bug applies before the long runs
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tinyddim").mkdir()
            shutil.copy(ROOT / "tinyddim" / BUGS[number - 1][0], Path(tmp) / "tinyddim")
            plant(tmp, *BUGS[number - 1][:3])
    survivors = []
    for number in chosen:
        result, seconds, tail = run_bug(number, BUGS[number - 1], args.timeout, args.all_tests)
        file, _, _, what = BUGS[number - 1]
        print(f"{number:2d}  {result:8s} {seconds:5.0f} s  {file:13s} {what}   [{tail}]", flush=True)
        if result != "killed":
            survivors.append(f"{number} ({file}: {what})")
    print(f"\n{len(survivors)} of {len(chosen)} planted bugs survived" + (":" if survivors else "."))
    for line in survivors:
        print("   ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
