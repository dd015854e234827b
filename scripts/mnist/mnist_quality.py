"""Quality metric for MNIST samples of the shipped tinyddim model.

A small CNN classifier is trained on the training digits (resized to the model's
resolution as in training: ``tinyddim.mnist.load_mnist``) and validated on the test digits;
it is cached to ``--classifier``.  A set of samples (N, H, W) in [0, 1] is then
scored by:

* confidence: fraction of samples whose max softmax > 0.9, divided by the same
  fraction for real test digits (``conf_ratio``; target >= 0.90);
* class balance: histogram of predicted classes; every class must be between
  3% and 20% of the samples;
* memorisation: median L2 distance from each sample to its nearest training
  image, divided by the same median for real test digits (``nn_ratio``;
  target >= 0.8).

Data: the MNIST training and test digits, read by ``tinyddim.mnist.load_mnist`` (found in ``--data-dir``,
$TINYDDIM_DATA or shared/data; its docstring says how the files are rebuilt). Only the training digits
train the classifier; the test digits validate it and are the "real digits" reference.

Usage (the defaults reproduce the README's table: the bundled model, sampled by tinyddim, 512 samples)::

    python scripts/mnist/mnist_quality.py --seed 0 --classifier RUN_DIR/classifier.pt \
        [--model PATH] [--sampler tinyddim|diffusers] [--report report.json] [--images samples.npy]

The scoring is importable: ``load_mnist``, ``get_classifier``, ``classify``,
``score_samples``.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import tinyddim

CONF_THRESHOLD = 0.9
TARGET_CONF_RATIO = 0.90
CLASS_MIN, CLASS_MAX = 0.03, 0.20
TARGET_NN_RATIO = 0.8


def load_mnist(data_dir, split, resolution):
    """Images (N, R, R) float32 in [0, 1] and labels (N,) int64, as the bundled model saw them."""
    images, labels = tinyddim.mnist.load_mnist(split, data_dir, size=resolution)
    return images[..., 0], labels  # (N, R, R, 1) -> (N, R, R)


class SmallCNN(nn.Module):
    def __init__(self, resolution):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        r = resolution // 4
        self.h = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * r * r, 128),
                               nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, x):  # x: (N, 1, R, R) in [0, 1]
        return self.h(self.f(x - 0.5))


def _shift(x, gen, m=1):
    """Random integer translation by up to m pixels (zero padding)."""
    n, _, h, w = x.shape
    p = F.pad(x, (m, m, m, m))
    dx = torch.randint(0, 2 * m + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * m + 1, (n,), generator=gen)
    return torch.stack([p[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def classify(clf, images, batch=1000):
    """images: (N, H, W) in [0, 1] -> softmax probabilities (N, 10) as numpy."""
    clf.eval()
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    return torch.cat([F.softmax(clf(x[i:i + batch]), -1) for i in range(0, len(x), batch)]).numpy()


def train_classifier(data_dir, resolution, epochs=8, seed=0, log=print):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = load_mnist(data_dir, "train", resolution)
    xte, yte = load_mnist(data_dir, "test", resolution)
    xtr, ytr = torch.from_numpy(xtr)[:, None], torch.from_numpy(ytr)
    clf = SmallCNN(resolution)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    steps_per_epoch = (len(xtr) + 127) // 128
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * steps_per_epoch)
    t0 = time.time()
    for ep in range(epochs):
        clf.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 128):
            b = perm[i:i + 128]
            loss = F.cross_entropy(clf(_shift(xtr[b], gen)), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sch.step()
        acc = float((classify(clf, xte).argmax(1) == yte).mean())
        log(f"classifier epoch {ep + 1}/{epochs} test acc {acc:.4f} ({time.time() - t0:.0f}s)")
    return clf, acc


def get_classifier(data_dir, resolution, cache=None, log=print):
    """Load the cached classifier for this resolution, or train (and cache) one."""
    if cache and os.path.exists(cache):
        ck = torch.load(cache, weights_only=False)
        if ck["resolution"] == resolution:
            clf = SmallCNN(resolution)
            clf.load_state_dict(ck["state_dict"])
            return clf.eval(), ck["test_acc"]
        log(f"cached classifier is for resolution {ck['resolution']}, retraining")
    clf, acc = train_classifier(data_dir, resolution, log=log)
    if cache:
        tmp = cache + ".tmp"
        torch.save({"state_dict": clf.state_dict(), "resolution": resolution,
                    "test_acc": acc}, tmp)
        os.replace(tmp, cache)
    return clf.eval(), acc


def nn_distances(images, train_images, batch=512):
    """L2 distance from each image to its nearest training image (both in [0, 1])."""
    tr = torch.from_numpy(train_images.reshape(len(train_images), -1).astype(np.float32))
    x = torch.from_numpy(np.asarray(images, np.float32).reshape(len(images), -1))
    return torch.cat([torch.cdist(x[i:i + batch], tr).min(1).values
                      for i in range(0, len(x), batch)]).numpy()


def score_samples(samples, data_dir, clf, n_ref=1000, seed=0):
    """Score samples (N, H, W) in [0, 1] against real test digits; returns a dict."""
    samples = np.clip(np.asarray(samples, np.float32), 0, 1)
    res = samples.shape[-1]
    xtr, _ = load_mnist(data_dir, "train", res)
    xte, _ = load_mnist(data_dir, "test", res)
    ref = xte[np.random.default_rng(seed).choice(len(xte), n_ref, replace=False)]
    ps, pr = classify(clf, samples), classify(clf, ref)
    conf_s = float((ps.max(1) > CONF_THRESHOLD).mean())
    conf_r = float((pr.max(1) > CONF_THRESHOLD).mean())
    hist = np.bincount(ps.argmax(1), minlength=10) / len(samples)
    nn_s = float(np.median(nn_distances(samples, xtr)))
    nn_r = float(np.median(nn_distances(ref, xtr)))
    r = {
        "n": len(samples), "resolution": res,
        "conf_frac_samples": conf_s, "conf_frac_real": conf_r,
        "conf_ratio": conf_s / conf_r,
        "class_fractions": [round(float(h), 4) for h in hist],
        "nn_median_samples": nn_s, "nn_median_real": nn_r, "nn_ratio": nn_s / nn_r,
    }
    r["pass_conf"] = r["conf_ratio"] >= TARGET_CONF_RATIO
    r["pass_classes"] = bool(hist.min() >= CLASS_MIN and hist.max() <= CLASS_MAX)
    r["pass_nn"] = r["nn_ratio"] >= TARGET_NN_RATIO
    r["pass"] = r["pass_conf"] and r["pass_classes"] and r["pass_nn"]
    return r


def _to_nhw(img):
    img = np.asarray(img, np.float32)
    if img.ndim == 4 and img.shape[-1] == 1:
        img = img[..., 0]
    elif img.ndim == 4 and img.shape[1] == 1:
        img = img[:, 0]
    return img


def sample_diffusers(model, n, steps, seed, batch=256):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
    unet = UNet2DModel.from_pretrained(model, subfolder="unet")
    sched = DDIMScheduler.from_pretrained(model, subfolder="scheduler")  # from_config of saved one
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(sched.config))
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    out = [pipe(batch_size=min(batch, n - i), num_inference_steps=steps, eta=0.0,
                generator=gen, output_type="np").images for i in range(0, n, batch)]
    return _to_nhw(np.concatenate(out))


def sample_tinyddim(model, n, steps, seed):
    img = tinyddim.sample(batch_size=n, num_inference_steps=steps, generator=seed,
                          output_type="np", model=model)
    return _to_nhw(img)


def format_report(r):
    mark = lambda ok: "ok" if ok else "FAIL"
    return "\n".join([
        f"n={r['n']} res={r['resolution']} sampler={r.get('sampler', '?')} "
        f"classifier_test_acc={r.get('classifier_test_acc', float('nan')):.4f}",
        f"confident>{CONF_THRESHOLD}: samples {r['conf_frac_samples']:.3f} real "
        f"{r['conf_frac_real']:.3f} ratio {r['conf_ratio']:.3f} [{mark(r['pass_conf'])}]",
        "classes: " + " ".join(f"{i}:{f:.3f}" for i, f in enumerate(r["class_fractions"]))
        + f" [{mark(r['pass_classes'])}]",
        f"nn-train L2 median: samples {r['nn_median_samples']:.3f} real "
        f"{r['nn_median_real']:.3f} ratio {r['nn_ratio']:.3f} [{mark(r['pass_nn'])}]",
        f"PASS={r['pass']}",
    ])


def main():
    p = argparse.ArgumentParser(description="MNIST sample quality metric")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST files (default: see tinyddim.mnist)")
    p.add_argument("--model", default=None, help="diffusers pipeline folder (unet/, scheduler/) or converted file "
                                                "(default: the bundled model)")
    p.add_argument("--images", help="score a saved .npy of (N,H,W) in [0,1] instead of sampling")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=["diffusers", "tinyddim"], default="tinyddim")
    p.add_argument("--classifier", help="classifier cache file (trained if missing)")
    p.add_argument("--report", help="write the report as JSON here")
    p.add_argument("--save-samples", help="save the samples as .npy here")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    if a.sampler == "diffusers" and a.model is None and not a.images:
        p.error("--sampler diffusers needs --model (a diffusers pipeline folder)")
    t0 = time.time()
    if a.images:
        samples, sampler = _to_nhw(np.load(a.images)), "file"
    elif a.sampler == "tinyddim":
        samples, sampler = sample_tinyddim(a.model, a.n, a.steps, a.seed), "tinyddim"
    else:
        samples, sampler = sample_diffusers(a.model, a.n, a.steps, a.seed), "diffusers-ddim"
    t_sample = time.time() - t0
    if a.save_samples:
        np.save(a.save_samples, samples)
    clf, acc = get_classifier(a.data_dir, samples.shape[-1], a.classifier)
    r = score_samples(samples, a.data_dir, clf)
    r.update(sampler=sampler, steps=a.steps, seed=a.seed, model=a.model or "bundled",
             classifier_test_acc=acc, sample_seconds=round(t_sample, 1))
    print(format_report(r))
    if a.report:
        with open(a.report, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
