"""Sample quality measured exactly on data whose density q is known (Gaussian mixtures).

For samples x_1..x_n of a model p_theta and the true density q:

    cross-entropy     H(p_theta, q) = -E_{x ~ p_theta}[log q(x)]       (nats per example)
    data entropy      H(q)          = -E_{x ~ q}[log q(x)]

H(p_theta, q) - H(q) is not a divergence (it can be negative: a model that puts all its mass on
the modes scores below H(q)), so it is read together with two counts that catch exactly that:

    low-density share   the fraction of samples with log q(x) below the 1st percentile of
                        log q over draws from q (1% for q itself): samples between the modes;
    mode coverage       each sample assigned to its most likely component
                        argmax_k w_k N(x; mu_k, Sigma_k); the counts are tested against
                        n P_q(assigned to k) by a chi-square test (coverage.py). For well separated
                        components P_q(assigned to k) = w_k; for overlapping ones it is the
                        probability, estimated from draws of q, that a draw of q lands in
                        component k's region, so q itself passes the test.

A mode is missed as defined in ``ddpm.quality.coverage``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ddpm.data.mixture import GaussianMixture
from ddpm.errors import DataError
from ddpm.quality.coverage import ModeCoverage, coverage

LOW_DENSITY_PERCENTILE = 1.0  # percent of draws of q below the low-density threshold
REFERENCE_DRAWS = 100_000  # draws of q behind the entropy, threshold and assignment rates


@dataclass(frozen=True)
class DensityReference:
    """What q itself reaches, from n seeded draws of q (nats; SE of the Monte Carlo means)."""

    entropy: float  # H(q) = -E_q[log q(x)]
    entropy_se: float
    log_q_threshold: float  # LOW_DENSITY_PERCENTILE-th percentile of log q(x), x ~ q
    assign_probs: list[float]  # P_q(argmax_k w_k N(x; mu_k, Sigma_k) = k), [K]
    weights: list[float]  # w_k, [K]
    n: int


@dataclass(frozen=True)
class DensityScores:
    """Quality of n points under the true density q; see the module docstring."""

    name: str
    n: int
    cross_entropy: float  # -E[log q(x)] over the points, nats
    cross_entropy_se: float
    low_density_share: float  # fraction with log q(x) < the reference threshold
    low_density_share_se: float  # binomial sqrt(p (1 - p) / n)
    modes: ModeCoverage

    def to_dict(self) -> dict:
        return asdict(self)


def density_reference(
    density: GaussianMixture, n: int = REFERENCE_DRAWS, generator: torch.Generator | None = None
) -> DensityReference:
    """Entropy, low-density threshold and component assignment rates of q from n draws of q."""
    if n < 100:
        raise DataError(f"density_reference needs n >= 100 draws of q (got {n})")
    x = density.sample(n, generator=generator)
    log_q = density.log_prob(x)
    assigned = density.responsibilities(x).argmax(dim=-1)
    rates = torch.bincount(assigned, minlength=density.num_components).double() / n
    return DensityReference(
        entropy=-log_q.mean().item(),
        entropy_se=(log_q.std() / math.sqrt(n)).item(),
        log_q_threshold=torch.quantile(log_q, LOW_DENSITY_PERCENTILE / 100).item(),
        assign_probs=rates.tolist(),
        weights=density.weights.tolist(),
        n=n,
    )


def mode_coverage(density: GaussianMixture, x: Tensor, ref: DensityReference) -> ModeCoverage:
    """Assign each point of x [n, D] to its most likely component; chi-square against q."""
    counts = torch.bincount(
        density.responsibilities(x).argmax(dim=-1), minlength=density.num_components
    )
    # A component no draw of q reached gets a floor of half a draw, so the test stays defined.
    probs = torch.tensor(ref.assign_probs, dtype=torch.float64).clamp_min(0.5 / ref.n)
    return coverage(counts, probs)


def density_scores(
    density: GaussianMixture, x: Tensor, ref: DensityReference, name: str = "samples"
) -> DensityScores:
    """Cross-entropy under q, low-density share and mode coverage of the points x [n, D]."""
    x = x.reshape(len(x), -1)
    if len(x) < 2:
        raise DataError(f"{name}: need at least 2 points to score (got {len(x)})")
    if not torch.isfinite(x).all():
        raise DataError(f"{name}: the points contain NaN or infinite values")
    density = density.to(x.device)
    log_q = density.log_prob(x)
    n = len(x)
    low = (log_q < ref.log_q_threshold).double().mean().item()
    return DensityScores(
        name=name,
        n=n,
        cross_entropy=-log_q.mean().item(),
        cross_entropy_se=(log_q.std() / math.sqrt(n)).item(),
        low_density_share=low,
        low_density_share_se=math.sqrt(low * (1 - low) / n),
        modes=mode_coverage(density, x, ref),
    )
