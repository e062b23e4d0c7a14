"""Fréchet distance between two sets of clip features (FVD when the features are I3D's), from running sums, so
that memory stays flat in the number of clips and ranks combine their sums with one all-reduce.

    d² = |mu_r - mu_g|² + tr(S_r + S_g - 2 (S_r S_g)^½)

Tested against scipy.linalg.sqrtm by tests/trainer/test_fvd.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


class FeatureStats:
    """Count, sum and sum of outer products of feature vectors, in float64: mean and covariance of every vector
    added, without keeping them (d² floats however many clips; d = 400 for I3D is 1.3 MB)."""

    def __init__(self, dim: int):
        self.count = 0
        self.total = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def add(self, features: np.ndarray) -> None:
        """(n, d) features of n clips."""
        features = np.asarray(features, dtype=np.float64)
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def all_reduce(self) -> None:
        """Sum every rank's statistics into every rank's (gloo or NCCL); nothing when not distributed."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        dim = len(self.total)
        flat = torch.from_numpy(np.concatenate([[self.count], self.total, self.outer.ravel()]))
        if dist.get_backend() == "nccl":
            flat = flat.cuda()
        dist.all_reduce(flat)
        flat = flat.cpu().numpy()
        self.count = int(round(flat[0]))
        self.total = flat[1 : 1 + dim]
        self.outer = flat[1 + dim :].reshape(dim, dim)

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        """The unbiased sample covariance (n - 1), as numpy.cov and the common FVD implementations."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 clips, got {self.count}")
        mu = self.mean()
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (cov + cov.T) / 2  # exactly symmetric, for eigh


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix (negative rounding errors clipped to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """d² between N(mu1, cov1) and N(mu2, cov2).

    tr((S1 S2)^½) is computed as tr((A S2 A)^½) with A = S1^½: the two products have the same eigenvalues, and
    A S2 A is symmetric PSD, so the square root is real even when the covariances are singular (fewer clips than
    feature dimensions), where scipy's sqrtm of S1 S2 returns complex noise.
    """
    root = _sqrt_psd(cov1)
    eigenvalues = np.linalg.eigvalsh(root @ cov2 @ root)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def fvd(real: FeatureStats, generated: FeatureStats) -> float:
    """The Fréchet distance between the feature distributions of two clip sets (I3D features: FVD)."""
    return frechet_distance(real.mean(), real.covariance(), generated.mean(), generated.covariance())
