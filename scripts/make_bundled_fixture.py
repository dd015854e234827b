"""Write tests/fixtures/bundled_sample.npz: a few-step sample of the bundled model with a fixed seed.

Run it again whenever the bundled weights change: `python scripts/make_bundled_fixture.py`.
"""

from pathlib import Path

import numpy as np

import tinyddim

SEED, STEPS, BATCH = 1234, 5, 4


def main():
    images = tinyddim.sample(batch_size=BATCH, num_inference_steps=STEPS, generator=SEED, output_type="np",
                             progress=False)
    out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bundled_sample.npz"
    np.savez_compressed(out, images=images, seed=SEED, steps=STEPS)
    print(f"wrote {out} {images.shape}")


if __name__ == "__main__":
    main()
