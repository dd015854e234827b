"""The Fréchet distance: the formula against scipy and closed forms, the digit network against its torch
module, the shipped statistics, and `tinyddim fid`."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import tinyddim
from tinyddim import fid
from tinyddim.cli import main as cli
from tinyddim.features import FEATURES_FILE, digit_features, digit_logits, load_features
from tinyddim.mnist import load_mnist
from tinyddim.weights import read_state_dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "mnist"))
from train_features import DigitFeatureNet  # noqa: E402  (the torch module the weights were trained in)


def frechet_distance_scipy(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's algorithm: scipy's general matrix square root of Σ1Σ2, with a small ridge added to
    both covariances when that square root is not finite, and its real part."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        ridge = eps * np.eye(len(sigma1))
        covmean = scipy.linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
    if np.iscomplexobj(covmean):
        assert np.abs(np.diagonal(covmean).imag).max() < 1e-3
        covmean = covmean.real
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def gaussian_statistics(rng, n, dim, scale=1.0):
    """(μ, Σ) of n correlated samples in `dim` dimensions (singular when n <= dim)."""
    samples = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) * scale + rng.standard_normal(dim)
    return fid.feature_statistics(samples)


def random_rotation(rng, dim):
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diagonal(r))


# ---- the formula ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [8, 64])
def test_frechet_distance_matches_pytorch_fids_scipy_algorithm(dim):
    rng = np.random.default_rng(dim)
    for scale in (0.5, 1.0, 2.0):
        mu1, sigma1 = gaussian_statistics(rng, 4 * dim, dim)
        mu2, sigma2 = gaussian_statistics(rng, 4 * dim, dim, scale)
        ours = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
        reference = frechet_distance_scipy(mu1, sigma1, mu2, sigma2)
        assert abs(ours - reference) <= 1e-10 * reference  # measured: <= 4.4e-12 relative


def test_frechet_distance_has_its_closed_form_for_commuting_covariances():
    """Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ:  d² = ‖μ1 − μ2‖² + Σ_i (√a_i − √b_i)²; zeros make both singular."""
    rng = np.random.default_rng(1)
    dim = 32
    q = random_rotation(rng, dim)
    for zeros in (0, 12):
        a, b = rng.uniform(0.1, 3, dim), rng.uniform(0.1, 3, dim)
        a[:zeros], b[dim - zeros:] = 0, 0
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        closed_form = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
        ours = fid.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
        assert abs(ours - closed_form) <= 1e-13 * closed_form  # measured: 1e-15 and 0 relative


def test_singular_covariances_of_fewer_images_than_features():
    rng = np.random.default_rng(2)
    dim = 64
    mu1, sigma1 = gaussian_statistics(rng, 20, dim)  # rank 19
    mu2, sigma2 = gaussian_statistics(rng, 40, dim)  # rank 39
    assert np.linalg.matrix_rank(sigma1) == 19
    ours = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert ours == pytest.approx(fid.frechet_distance(mu2, sigma2, mu1, sigma1), rel=1e-10)  # d is symmetric
    assert abs(ours - frechet_distance_scipy(mu1, sigma1, mu2, sigma2)) <= 1e-6 * ours  # measured: 2.4e-8 relative
    assert fid.frechet_distance(mu1, sigma1, mu1, sigma1) <= 1e-13 * np.trace(sigma1)  # measured: 0
    # the same singular case as a closed form: Σ2 = c² Σ1 commutes with Σ1, d² = (1 − c)² Tr Σ1
    assert fid.frechet_distance(mu1, sigma1, mu1, 4 * sigma1) == pytest.approx(np.trace(sigma1), rel=1e-13)  # 2e-16


@pytest.mark.parametrize("mu,sigma,message", [
    (np.zeros(3), np.eye(4), r"mu2 must be \(D,\)"),
    (np.zeros(4), np.triu(np.ones((4, 4))), "not symmetric"),
    (np.zeros(4), -np.eye(4), "not positive semi-definite"),
    (np.full(4, np.nan), np.eye(4), "NaN"),
])
def test_frechet_distance_names_a_bad_argument(mu, sigma, message):
    with pytest.raises(ValueError, match=message):
        fid.frechet_distance(np.zeros(4), np.eye(4), mu, sigma)


# ---- the digit feature network ------------------------------------------------------------------------

def torch_network():
    network = DigitFeatureNet().eval()
    network.load_state_dict({key: torch.from_numpy(value) for key, value in
                             read_state_dict(FEATURES_FILE).items()})
    return network


def test_numpy_feature_network_matches_its_torch_module():
    rng = np.random.default_rng(3)
    digits = (rng.random((16, 16, 16, 1)) ** 4).astype(np.float32)  # sparse bright strokes on black
    network, params = torch_network(), load_features()
    with torch.no_grad():
        x = torch.from_numpy(digits).permute(0, 3, 1, 2)  # (N, 16, 16, 1) -> (N, 1, 16, 16)
        features, logits = network.features(x).numpy(), network(x).numpy()
    assert digit_features(params, digits).shape == (16, 128)
    np.testing.assert_allclose(digit_features(params, digits), features, atol=1e-4, rtol=0)  # measured: 4e-6 (features up to 8)
    np.testing.assert_allclose(digit_logits(params, digits), logits, atol=1e-4, rtol=0)  # measured: 4e-6


def test_bundled_feature_network_is_small_and_classifies_test_digits():
    assert Path(FEATURES_FILE).stat().st_size < 1 << 20
    assert (Path(FEATURES_FILE).parent / "mnist_features.md").is_file()
    try:
        images, labels = load_mnist("test", n=2000)
    except FileNotFoundError:
        pytest.skip("no MNIST data folder")
    accuracy = (digit_logits(load_features(), images).argmax(1) == labels).mean()
    assert accuracy >= 0.97  # measured on all 10k in the model card


def test_shipped_test_statistics_are_a_covariance_and_equal_the_recomputed_ones():
    mu, sigma = fid.mnist_test_statistics()
    assert mu.shape == (128,) and sigma.shape == (128, 128)
    np.testing.assert_array_equal(sigma, sigma.T)
    assert np.linalg.eigvalsh(sigma).min() > -1e-10
    try:
        images, _ = load_mnist("test")
    except FileNotFoundError:
        pytest.skip("no MNIST data folder")
    mu_again, sigma_again = fid.image_statistics(images)
    # the features are float32: a change in the ops' rounding (a faster group norm) moves them by ~1e-7 relative
    np.testing.assert_allclose(mu_again, mu, rtol=0, atol=1e-6)  # measured: 3.4e-7
    np.testing.assert_allclose(sigma_again, sigma, rtol=0, atol=1e-5)  # measured: 1.2e-6 (Σ up to 10)
    assert fid.frechet_distance(mu_again, sigma_again, mu, sigma) < 1e-6


# ---- folders, files and the command line ----------------------------------------------------------------

def blobs(rng, n, size=16, power=3):
    """n float images in [0, 1], mostly dark (rounded to 8 bits, as a PNG keeps them)."""
    images = rng.random((n, size, size)) ** power
    return np.round(images * 255) / 255


def write_folder(folder, images):
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def run(args, capsys):
    code = cli(["fid", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip()


def test_cli_distance_of_a_folder_to_mnist_and_to_another_folder(tmp_path, capsys):
    rng = np.random.default_rng(4)
    a, b = blobs(rng, 12), blobs(rng, 9, power=6)
    folder_a, folder_b = write_folder(tmp_path / "a", a), write_folder(tmp_path / "b", b)
    code, out, _ = run([folder_a], capsys)
    assert code == 0 and float(out[-1]) == pytest.approx(fid.fid_against_mnist(a), rel=1e-5)
    code, out, _ = run([folder_a, folder_b], capsys)
    expected = fid.frechet_distance(*fid.image_statistics(a), *fid.image_statistics(b))
    assert code == 0 and float(out[-1]) == pytest.approx(expected, rel=1e-5) and expected > 0
    assert fid.fid_against_mnist(folder_a) == fid.fid_against_mnist(a)  # a path is read like the images


def test_a_folder_s_first_images_by_name_are_its_limited_statistics(tmp_path):
    images = blobs(np.random.default_rng(9), 12)
    folder = write_folder(tmp_path / "a", images)
    mu, sigma = fid.folder_statistics(folder, limit=7)
    mu_first, sigma_first = fid.image_statistics(images[:7, ..., None])  # 000.png … 006.png
    np.testing.assert_allclose(mu, mu_first, atol=1e-6)
    np.testing.assert_allclose(sigma, sigma_first, atol=1e-6)
    assert not np.allclose(sigma, fid.folder_statistics(folder)[1], atol=1e-6)


def test_images_as_floats_uint8_or_pil_give_the_same_statistics():
    images = blobs(np.random.default_rng(8), 6)  # (6, 16, 16) floats, multiples of 1/255
    pixels = np.round(images * 255).astype(np.uint8)
    mu, sigma = fid.image_statistics(images[..., None])
    for same in (images, pixels, [Image.fromarray(p) for p in pixels]):
        mu_same, sigma_same = fid.image_statistics(same)
        np.testing.assert_allclose(mu_same, mu, atol=1e-6)  # measured: 0
        np.testing.assert_allclose(sigma_same, sigma, atol=1e-6)
    with pytest.raises(ValueError, match=r"takes images \(N, 16, 16, 1\)"):
        fid.image_statistics(np.zeros((4, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fid.image_statistics(images * 2 - 1)


def test_folder_and_its_saved_statistics_give_the_same_distance(tmp_path, capsys):
    folder = write_folder(tmp_path / "a", blobs(np.random.default_rng(5), 10))
    stats = tmp_path / "a.npz"
    code, out, _ = run([folder, "--save-stats", stats], capsys)
    assert code == 0 and stats.is_file() and len(out) == 2
    with np.load(stats) as data:
        assert sorted(data.files) == ["mu", "sigma"] and data["sigma"].shape == (128, 128)
    code, again, _ = run([stats], capsys)
    assert code == 0 and again[-1] == out[-1]
    assert fid.fid_against_mnist(str(stats)) == fid.fid_against_mnist(folder)
    code, _, err = run([folder, "--save-stats", stats], capsys)
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert run([folder, "--save-stats", stats, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a.npz"]  # no temporary file left


def test_cli_prints_the_distance_alone_on_its_last_line(tmp_path):
    folder = write_folder(tmp_path / "a", blobs(np.random.default_rng(6), 4))
    done = subprocess.run([sys.executable, "-m", "tinyddim", "fid", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.splitlines()[-1]) > 0


def bad_inputs(tmp_path):
    rng = np.random.default_rng(7)
    (tmp_path / "empty").mkdir()
    mixed = write_folder(tmp_path / "mixed", blobs(rng, 3))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(mixed / "big.png")
    write_folder(tmp_path / "28x28", blobs(rng, 3, size=28))
    write_folder(tmp_path / "one", blobs(rng, 1))
    broken = write_folder(tmp_path / "broken", blobs(rng, 3))
    (broken / "000.png").write_bytes(b"not a png")
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(128))
    np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(128), sigma=np.eye(64))
    (tmp_path / "not_a_zip.npz").write_bytes(b"garbage")
    return [
        ([tmp_path / "empty"], "no PNG images"),
        ([tmp_path / "mixed"], "different sizes"),
        ([tmp_path / "28x28"], "28x28 images"),
        ([tmp_path / "one"], "at least 2"),
        ([tmp_path / "broken"], "000.png"),
        ([tmp_path / "no_sigma.npz"], "no 'sigma'"),
        ([tmp_path / "bad_shape.npz"], "sigma (D, D)"),
        ([tmp_path / "not_a_zip.npz"], "not an .npz archive"),
        ([tmp_path / "missing"], "no such file or folder"),
        ([tmp_path / "one" / "000.png"], "neither a folder"),
        ([tmp_path / "28x28", "--save-stats", tmp_path / "out.txt"], "must end in .npz"),
    ]


def test_cli_reports_each_bad_input_in_one_line_with_exit_code_2(tmp_path, capsys):
    for args, message in bad_inputs(tmp_path):
        code, out, err = run(args, capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (args, err)
        assert str(args[0].name) in err or message == "must end in .npz", err
