"""Train the digit feature network of `tinyddim fid`, and compute the MNIST test digits' statistics.

The network is a small CNN classifier of 16x16 digits (`DigitFeatureNet` below; tinyddim's NumPy forward of
the same weights is `tinyddim.features.digit_features`). Its penultimate activations, 128 numbers per image,
are the features whose mean and covariance the Fréchet distance compares.

It is trained on the 10,000 training digits as the bundled diffusion model saw them
(`tinyddim.mnist.load_mnist("train", size=16)`: [0, 1], 16x16), with light augmentation (a random affine
map per digit: rotation up to 10 degrees, scale 0.9-1.1, shift up to 1.5 pixels), AdamW with a one-cycle
learning rate, batch 128, cross-entropy on the digit labels. Then:

1. the weights are written as float16 (half the size; computed in float32) to
   `tinyddim/bundled/mnist_features.safetensors`, with the training facts in the file's metadata;
2. the features of the 10,000 test digits are computed by tinyddim's NumPy forward, and their mean `mu`
   and covariance `sigma` (np.cov, N − 1) written to `tinyddim/bundled/mnist_test_stats.npz`.

    python scripts/mnist/train_features.py                   # train (a few minutes on one core), then 2.
    python scripts/mnist/train_features.py --stats-only      # only 2., from the shipped weights

Both files are written to a temporary name and renamed; an existing one is replaced only with --overwrite.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tinyddim.config import write_atomic  # noqa: E402
from tinyddim.features import FEATURES_FILE, NUM_GROUPS, NORM_EPS  # noqa: E402
from tinyddim.fid import MNIST_TEST_STATS, image_statistics, save_statistics  # noqa: E402
from tinyddim.mnist import load_mnist  # noqa: E402


class DigitFeatureNet(nn.Module):
    """16x16x1 digits in [0, 1] -> 128 features -> 10 logits; the state-dict names are tinyddim's params tree."""

    def __init__(self, channels=(32, 64, 64), features=128, classes=10):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)              # 16x16
        self.norm1 = nn.GroupNorm(NUM_GROUPS, c1, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)   # 8x8
        self.norm2 = nn.GroupNorm(NUM_GROUPS, c2, eps=NORM_EPS)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)   # 4x4
        self.norm3 = nn.GroupNorm(NUM_GROUPS, c3, eps=NORM_EPS)
        self.fc = nn.Linear(c3 * 4 * 4, features)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(features, classes)

    def features(self, x):
        """x (N, 1, 16, 16) in [0, 1] -> the penultimate activations (N, 128)."""
        h = x * 2 - 1
        h = F.silu(self.norm1(self.conv1(h)))
        h = F.silu(self.norm2(self.conv2(h)))
        h = F.silu(self.norm3(self.conv3(h)))
        return F.silu(self.fc(h.flatten(1)))  # (N, C, 4, 4) -> (N, C·16)

    def forward(self, x):
        return self.head(self.dropout(self.features(x)))


def augment(x, gen, degrees=10.0, scale=0.1, shift=1.5):
    """A random affine map of each digit (N, 1, H, W): rotation, scale and shift, bilinear, zeros outside."""
    n, _, height, _ = x.shape
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)
    factor = 1 + (torch.rand(n, generator=gen) * 2 - 1) * scale
    offset = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift * 2 / height  # pixels -> [-1, 1] units
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)  # (N, 2, 3) -> (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy(model, x, y, batch=1000):
    model.eval()
    logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).float().mean())


def train(epochs=10, batch=128, lr=3e-3, seed=0, log=print):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = load_mnist("train", size=16)  # (N, 16, 16, 1) in [0, 1]
    test_images, test_labels = load_mnist("test", size=16)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels)  # NHWC -> NCHW
    x_test, y_test = torch.from_numpy(test_images).permute(0, 3, 1, 2), torch.from_numpy(test_labels)
    model = DigitFeatureNet()
    steps = epochs * math.ceil(len(x) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            b = order[i:i + batch]
            loss = F.cross_entropy(model(augment(x[b], gen)), y[b])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        acc = accuracy(model, x_test, y_test)
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {acc:.4f} ({time.time() - start:.0f} s)")
    facts = dict(epochs=epochs, batch=batch, lr=lr, seed=seed, steps=steps, test_accuracy=round(acc, 4),
                 train_accuracy=round(accuracy(model, x, y), 4), seconds=round(time.time() - start),
                 threads=torch.get_num_threads())
    return model.eval(), facts


def save_weights(model, facts, path, overwrite=False):
    from safetensors.numpy import save_file

    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    state = {key: value.detach().numpy().astype(np.float16) for key, value in model.state_dict().items()}
    metadata = {"architecture": "DigitFeatureNet (scripts/mnist/train_features.py)", "training": json.dumps(facts)}
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", default=FEATURES_FILE, help="weights to write (default: the bundled file)")
    parser.add_argument("--stats", default=MNIST_TEST_STATS, help="statistics to write (default: the bundled file)")
    parser.add_argument("--stats-only", action="store_true", help="skip training; statistics from --weights")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.stats_only:
        model, facts = train(epochs=args.epochs, seed=args.seed)
        save_weights(model, facts, args.weights, args.overwrite)
        print(f"wrote {args.weights}: {json.dumps(facts)}")
    if os.path.exists(args.stats) and not args.overwrite:
        raise SystemExit(f"{args.stats} exists; pass --overwrite to replace it")
    from tinyddim.features import digit_logits, load_features

    images, labels = load_mnist("test", size=16)
    params = load_features(args.weights)
    accuracy = (digit_logits(params, images).argmax(1) == labels).mean()
    print(f"test accuracy of {args.weights} in tinyddim's NumPy forward: {accuracy:.4f}")
    mu, sigma = image_statistics(images, params=params)
    save_statistics(args.stats, mu, sigma, overwrite=args.overwrite)
    print(f"wrote {args.stats}: mu {mu.shape}, sigma {sigma.shape} from {len(images)} test digits")


if __name__ == "__main__":
    main()
