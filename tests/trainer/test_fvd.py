"""The Fréchet distance against scipy on known Gaussians, the streamed statistics against numpy, and FVD with random
I3D weights: about 0 for a set against itself, growing with the noise added to it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from dataset_factory import clip_frames

from rdtf.trainer.fvd import FeatureStats, frechet_distance, fvd
from rdtf.trainer.i3d import InceptionI3d, check_weights, i3d_features, i3d_input, load_i3d

SIZE = 64  # I3D input pixels in these tests (224 in use): small enough for a 2-core CPU


def scipy_frechet(mu1, cov1, mu2, cov2) -> float:
    """The formula as the common FVD implementations write it."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * covmean))


def random_cov(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_matches_scipy_on_known_gaussians():
    rng = np.random.default_rng(0)
    for dim in (1, 5, 32):
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        cov1, cov2 = random_cov(rng, dim), random_cov(rng, dim)
        assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(scipy_frechet(mu1, cov1, mu2, cov2), rel=1e-6)
    # closed form for diagonal covariances: |mu1 - mu2|² + sum (sqrt(a) - sqrt(b))²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 3.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(expected)


def test_streamed_statistics_equal_numpy_and_merge_across_parts():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 6)) * [1, 2, 3, 4, 5, 6] + 10
    whole, part_a, part_b = FeatureStats(6), FeatureStats(6), FeatureStats(6)
    for chunk in np.array_split(features, 7):
        whole.add(chunk)
    part_a.add(features[:20])
    part_b.add(features[20:])
    np.testing.assert_allclose(whole.mean(), features.mean(axis=0))
    np.testing.assert_allclose(whole.covariance(), np.cov(features, rowvar=False), rtol=1e-9, atol=1e-9)
    merged = FeatureStats(6)
    merged.count = part_a.count + part_b.count
    merged.total, merged.outer = part_a.total + part_b.total, part_a.outer + part_b.outer
    assert fvd(whole, merged) == pytest.approx(0.0, abs=1e-8)


def test_i3d_has_the_pytorch_i3d_layer_names_and_400_logits():
    model = InceptionI3d()
    keys = model.state_dict().keys()
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.bias"):
        assert key in keys
    assert model.state_dict()["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    x = i3d_input(np.zeros((2, 8, 32, 32, 3), dtype=np.uint8), size=SIZE)
    assert x.shape == (2, 3, 16, SIZE, SIZE) and float(x.min()) == -1.0
    assert model.eval()(x).shape == (2, 400)


def test_missing_weights_file_names_it_and_where_it_comes_from(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt.*i3d_pretrained_400\.pt"):
        check_weights(str(tmp_path / "nothere.pt"))


def test_saved_weights_load_back(tmp_path):
    model = load_i3d("random", seed=3)
    path = tmp_path / "i3d.pt"
    torch.save(model.state_dict(), path)
    loaded = load_i3d(str(path))
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_fvd_is_about_zero_on_itself_and_grows_with_noise():
    torch.set_num_threads(1)
    model = load_i3d("random", seed=0)
    clips = np.stack([clip_frames(i, 8, 32) for i in range(10)])
    real = FeatureStats(400)
    real.add(i3d_features(model, clips, SIZE))
    scale = np.trace(real.covariance())
    assert abs(fvd(real, real)) < 1e-4 * scale  # rounding in the 390 null directions of 10 clips
    rng = np.random.default_rng(0)
    distances = []
    for sigma in (8, 32, 96):
        noisy = np.clip(clips + rng.normal(0, sigma, clips.shape), 0, 255).astype(np.uint8)
        stats = FeatureStats(400)
        stats.add(i3d_features(model, noisy, SIZE))
        distances.append(fvd(real, stats))
    assert 0 < distances[0] < distances[1] < distances[2], distances
