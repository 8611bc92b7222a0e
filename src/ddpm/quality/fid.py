"""Distances between two sets of features: Frechet distance (FID) and kernel distance (KID).

FID [Heu17] fits a Gaussian to each set, N(mu_1, S_1) and N(mu_2, S_2), and reports the squared
2-Wasserstein distance between them:

    FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2})

(tr (S_1 S_2)^{1/2} is computed as the sum of square roots of the eigenvalues of the symmetric
S_1^{1/2} S_2 S_1^{1/2}, which needs no complex matrix square root). The plug-in estimate is
biased upwards by O(1/n), so FIDs are comparable only at equal n.

KID [Bin18] is the squared maximum mean discrepancy with the cubic kernel
k(x, y) = (x.y / d + 1)^3, estimated without bias (the U-statistic of [Gre12], eq. (3)):

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

on S disjoint random subsets of m points of each set; KID is their mean and its SE their std /
sqrt(S). Being unbiased, KID is ~0 (within its SE) for two samples of one distribution, at any n.

References:
    [Heu17] Heusel et al. GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
            Equilibrium. arXiv:1706.08500
    [Bin18] Binkowski, Sutherland, Arbel, Gretton. Demystifying MMD GANs. arXiv:1801.01401
    [Gre12] Gretton et al. A Kernel Two-Sample Test. JMLR 13 (2012)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpm.data.mixture import MonteCarloEstimate
from ddpm.errors import DataError


def _check_features(name: str, f: Tensor, min_n: int) -> Tensor:
    if f.dim() != 2 or len(f) < min_n:
        raise DataError(f"{name}: need features of shape [n >= {min_n}, d] (got {tuple(f.shape)})")
    return f.to(torch.float64)


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    lam, u = torch.linalg.eigh(s)
    return (u * lam.clamp_min(0).sqrt()) @ u.T


def frechet_distance(f1: Tensor, f2: Tensor) -> float:
    """FID between feature sets f1 [n1, d] and f2 [n2, d] (float64; see the module docstring)."""
    f1, f2 = _check_features("FID", f1, 2), _check_features("FID", f2, 2)
    if f1.shape[1] != f2.shape[1]:
        raise DataError(f"FID: feature dimensions differ ({f1.shape[1]} vs {f2.shape[1]})")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T).reshape(f1.shape[1], -1), torch.cov(f2.T).reshape(f2.shape[1], -1)
    root1 = _psd_sqrt(s1)
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp_min(0).sqrt().sum()
    fid = (mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross
    return max(fid.item(), 0.0)


def _mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """MMD^2_u with the cubic polynomial kernel for x, y [m, d] ([Gre12] eq. (3))."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = m * (m - 1)
    return ((kxx.sum() - kxx.trace()) / off + (kyy.sum() - kyy.trace()) / off).item() - (
        2 * kxy.mean().item()
    )


def kernel_distance(
    f1: Tensor, f2: Tensor, subsets: int = 10, generator: torch.Generator | None = None
) -> MonteCarloEstimate:
    """KID between f1 [n1, d] and f2 [n2, d]: mean and SE of MMD^2_u over disjoint subsets.

    Each of ``subsets`` subsets holds m = min(n1, n2) // subsets points of each set, drawn by a
    random permutation (generator on the CPU).
    """
    if subsets < 2:
        raise DataError(f"KID: need at least 2 subsets for a standard error (got {subsets})")
    f1, f2 = _check_features("KID", f1, 2 * subsets), _check_features("KID", f2, 2 * subsets)
    if f1.shape[1] != f2.shape[1]:
        raise DataError(f"KID: feature dimensions differ ({f1.shape[1]} vs {f2.shape[1]})")
    m = min(len(f1), len(f2)) // subsets
    p1 = torch.randperm(len(f1), generator=generator)[: m * subsets].to(f1.device)
    p2 = torch.randperm(len(f2), generator=generator)[: m * subsets].to(f2.device)
    values = torch.tensor(
        [
            _mmd2_unbiased(f1[p1[i * m : (i + 1) * m]], f2[p2[i * m : (i + 1) * m]])
            for i in range(subsets)
        ],
        dtype=torch.float64,
    )
    return MonteCarloEstimate(values.mean().item(), (values.std() / math.sqrt(subsets)).item())
