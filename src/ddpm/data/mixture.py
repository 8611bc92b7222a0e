"""Gaussian mixtures: a data distribution whose density, entropy and diffused laws are exact.

    q(x_0) = sum_k w_k N(x_0; mu_k, Sigma_k)

Diffusing x_0 with q(x_t | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I) [Ho20] eq. (4) keeps
a mixture: q(x_t) = sum_k w_k N(x_t; sqrt(alpha_bar) mu_k, alpha_bar Sigma_k + (1 - alpha_bar) I).
Every density below is computed in the eigenbasis of Sigma_k = U_k diag(lambda_k) U_k^T, where
alpha_bar Sigma_k + (1 - alpha_bar) I = U_k diag(alpha_bar lambda_k + 1 - alpha_bar) U_k^T is
diagonal for every alpha_bar at once: one factorisation per component serves a batch of
examples that each have their own alpha_bar, and nothing is inverted as alpha_bar -> 1.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ddpm.errors import DataError

_KEYS = ("weights", "means", "covariances", "stds")
_WEIGHT_SUM_TOL = 1e-6  # weights must sum to 1 within this; they are never renormalised
_SYMMETRY_RTOL = 1e-9  # |Sigma - Sigma^T| <= rtol * max|Sigma|


class MonteCarloEstimate(NamedTuple):
    """A Monte Carlo mean and its standard error (sample std / sqrt(n))."""

    value: float
    se: float


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in float64. Compare mixtures by their tensors, not with ==.

    weights: [K] positive, summing to 1; means: [K, D]; covs: [K, D, D] symmetric positive definite.
    """

    weights: Tensor  # [K]
    means: Tensor  # [K, D]
    covs: Tensor  # [K, D, D]

    def __post_init__(self) -> None:
        device = self.means.device if isinstance(self.means, Tensor) else None
        for name in ("weights", "means", "covs"):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float64, device=device)
            object.__setattr__(self, name, value)
        k, d = self.means.shape if self.means.dim() == 2 else (-1, -1)
        if k < 1 or d < 1 or self.weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise DataError(
                "GaussianMixture: expected weights [K], means [K, D], covs [K, D, D]; got "
                f"{tuple(self.weights.shape)}, {tuple(self.means.shape)}, {tuple(self.covs.shape)}"
            )

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, device: torch.device | str) -> GaussianMixture:
        """The same mixture with its tensors on device."""
        return GaussianMixture(self.weights.to(device), self.means.to(device), self.covs.to(device))

    # -- densities ---------------------------------------------------------------------------

    def _log_joint(self, xt: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log w_k + log N(x_t; sqrt(ab) mu_k, ab Sigma_k + (1 - ab) I): [N, K].

        Also returns the posterior mean of x_0 given x_t and component k, [N, K, D]:
        mu_k + sqrt(ab) Sigma_k (ab Sigma_k + (1 - ab) I)^{-1} (x_t - sqrt(ab) mu_k),
        and the diagonal of its posterior covariance, [N, K, D]:
        Sigma_k - ab Sigma_k (ab Sigma_k + (1 - ab) I)^{-1} Sigma_k
            = U_k diag(lambda_k (1 - ab) / (ab lambda_k + 1 - ab)) U_k^T.
        """
        m = self.to(xt.device)
        xt = xt.to(torch.float64)
        if xt.dim() != 2 or xt.shape[1] != self.dim:
            raise DataError(f"GaussianMixture: expected x of shape [N, {self.dim}], got {xt.shape}")
        ab = _alpha_bar_column(alpha_bar, xt)  # [N or 1, 1, 1]
        lam, u = torch.linalg.eigh(m.covs)  # Sigma_k = U_k diag(lam_k) U_k^T: [K, D], [K, D, D]
        r = xt[:, None, :] - ab.sqrt() * m.means  # [N, K, D]
        y = torch.einsum("kde,nkd->nke", u, r)  # U_k^T r, [N, K, D]
        c = ab * lam + (1 - ab)  # eigenvalues of the diffused covariance, [N, K, D]
        log_normal = -0.5 * (
            self.dim * math.log(2 * math.pi) + c.log().sum(-1) + (y**2 / c).sum(-1)
        )
        x0_given_k = m.means + ab.sqrt() * torch.einsum("kde,nke->nkd", u, lam * y / c)
        var_given_k = torch.einsum("kde,nke->nkd", u**2, lam * (1 - ab) / c)
        return m.weights.log() + log_normal, x0_given_k, var_given_k

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) in nats: [N, D] -> [N] float64 (logsumexp over components)."""
        return torch.logsumexp(self._log_joint(x, 1.0)[0], dim=-1)

    def diffused_log_prob(self, xt: Tensor, alpha_bar: float | Tensor) -> Tensor:
        """log q_t(x_t) of the diffused mixture (``diffused``) in nats: xt [N, D] -> [N]
        float64, with alpha_bar a float or one value per example [N]."""
        return torch.logsumexp(self._log_joint(xt, alpha_bar)[0], dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities q(k | x): [N, D] -> [N, K], rows sum to 1."""
        return torch.softmax(self._log_joint(x, 1.0)[0], dim=-1)

    def diffused(self, alpha_bar: float) -> GaussianMixture:
        """Law of x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps, x_0 ~ q, eps ~ N(0, I); [Ho20] eq. (4)."""
        if not 0.0 <= alpha_bar <= 1.0:
            raise DataError(f"diffused: alpha_bar must be in [0, 1] (got {alpha_bar})")
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.covs.device)
        return GaussianMixture(
            self.weights.clone(),
            math.sqrt(alpha_bar) * self.means,
            alpha_bar * self.covs + (1 - alpha_bar) * eye,
        )

    def posterior_mean_x0(self, xt: Tensor, alpha_bar: float | Tensor) -> Tensor:
        """E[x_0 | x_t] for x_0 ~ q and x_t | x_0 ~ N(sqrt(ab) x_0, (1 - ab) I).

        = sum_k q_t(k | x_t) (mu_k + sqrt(ab) Sigma_k (ab Sigma_k + (1 - ab) I)^{-1}
        (x_t - sqrt(ab) mu_k)), with q_t(k | x_t) the responsibilities under diffused(ab).
        The Bayes-optimal noise prediction follows as (x_t - sqrt(ab) E[x_0 | x_t]) / sqrt(1 - ab).

        xt: [N, D]; alpha_bar: a float or a [N] tensor in [0, 1] (one per example). Returns [N, D]
        float64. Exact at ab = 1 (returns x_t) and ab = 0 (returns the mixture mean).
        """
        return self.posterior_x0(xt, alpha_bar)[0]

    def posterior_x0(self, xt: Tensor, alpha_bar: float | Tensor) -> tuple[Tensor, Tensor]:
        """E[x_0 | x_t] and the diagonal of Cov(x_0 | x_t), both [N, D] float64.

        By the law of total variance over the component k ~ q_t(k | x_t):
            Var(x_0 | x_t) = sum_k q_t(k | x_t) (diag Cov_k(x_0 | x_t) + (m_k - m)^2),
        with m_k the per-component posterior means and m = E[x_0 | x_t] (deviations from m
        rather than second moments minus m^2, so nothing cancels). Same arguments as
        ``posterior_mean_x0``.
        """
        log_joint, x0_given_k, var_given_k = self._log_joint(xt, alpha_bar)
        resp = torch.softmax(log_joint, dim=-1)  # [N, K]
        mean = torch.einsum("nk,nkd->nd", resp, x0_given_k)
        spread = (x0_given_k - mean[:, None, :]) ** 2
        return mean, torch.einsum("nk,nkd->nd", resp, var_given_k + spread)

    # -- sampling ----------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws x = mu_k + U_k diag(sqrt(lambda_k)) eps, k ~ w: [n, D] float64.

        Drawn on the generator's device (the mixture's device without a generator).
        """
        device = generator.device if generator is not None else self.means.device
        m = self.to(device)
        k = torch.multinomial(m.weights, n, replacement=True, generator=generator)  # [n]
        lam, u = torch.linalg.eigh(m.covs)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        return m.means[k] + torch.einsum("nde,ne->nd", u[k], lam[k].clamp_min(0).sqrt() * eps)

    def entropy_mc(self, n: int, generator: torch.Generator | None = None) -> MonteCarloEstimate:
        """H(q) = -E_q[log q(x)] in nats, estimated from n samples, with its standard error."""
        if n < 2:
            raise DataError(f"entropy_mc needs n >= 2 samples (got {n})")
        log_q = self.log_prob(self.sample(n, generator=generator))
        return MonteCarloEstimate(-log_q.mean().item(), (log_q.std() / math.sqrt(n)).item())

    # -- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"weights": [K], "means": [K][D], "covariances": [K][D][D]}`` as plain lists."""
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covs.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "mixture") -> GaussianMixture:
        """Validate and build from to_dict's layout; "stds" may replace "covariances".

        "stds" per component is a scalar (isotropic) or a length-D list (diagonal). Each
        problem raises DataError naming source and the key.
        """
        if not isinstance(d, dict):
            raise DataError(
                f"{source}: expected a JSON object with keys weights, means, covariances"
            )
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise DataError(
                f"{source}: unknown key(s) {', '.join(unknown)}; use {', '.join(_KEYS)}"
            )
        for key in ("weights", "means"):
            if key not in d:
                raise DataError(f"{source}: missing key '{key}'")
        if ("covariances" in d) == ("stds" in d):
            raise DataError(f"{source}: give exactly one of 'covariances' or 'stds'")
        weights = _numbers(d["weights"], 1, source, "weights")
        means = _numbers(d["means"], 2, source, "means")
        (k,), (k_means, dim) = weights.shape, means.shape
        if k_means != k:
            raise DataError(f"{source}: 'means' has {k_means} rows but 'weights' has {k} entries")
        if (weights <= 0).any():
            raise DataError(f"{source}: 'weights' must all be > 0 (got {weights.tolist()})")
        if abs(weights.sum().item() - 1) > _WEIGHT_SUM_TOL:
            raise DataError(
                f"{source}: 'weights' sum to {weights.sum().item():.9g}, not 1; fix the weights"
            )
        if "stds" in d:
            covs = _covs_from_stds(d["stds"], k, dim, source)
        else:
            covs = _numbers(d["covariances"], 3, source, "covariances")
            if covs.shape != (k, dim, dim):
                raise DataError(
                    f"{source}: 'covariances' has shape {list(covs.shape)}; expected "
                    f"[{k}, {dim}, {dim}] (one D x D matrix per component)"
                )
        _check_spd(covs, source)
        return cls(weights, means, covs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> GaussianMixture:
        """Read a mixture from a JSON file in from_dict's layout."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"mixture file {path} not found; check the path") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read a JSON mixture ({e}); fix the file") from None
        return cls.from_dict(d, source=str(path))


def _alpha_bar_column(alpha_bar: float | Tensor, xt: Tensor) -> Tensor:
    """alpha_bar as a float64 tensor of shape [N or 1, 1, 1] on xt's device, checked in [0, 1]."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64, device=xt.device)
    if ab.dim() == 0:
        ab = ab.reshape(1)
    if ab.dim() != 1 or ab.shape[0] not in (1, xt.shape[0]):
        raise DataError(
            f"alpha_bar must be a float or a [N] tensor with N = {xt.shape[0]} (got {ab.shape})"
        )
    if not ((ab >= 0) & (ab <= 1)).all():
        raise DataError("alpha_bar must lie in [0, 1]")
    return ab[:, None, None]


def _numbers(value: Any, rank: int, source: str, key: str) -> Tensor:
    """A nested list of finite numbers of the given rank as float64, or DataError."""
    try:
        t = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            f"{source}: '{key}' must be a rectangular nested list of numbers ({rank}-D)"
        ) from None
    if t.dim() != rank or t.numel() == 0:
        raise DataError(
            f"{source}: '{key}' must be a non-empty {rank}-D list (got shape {list(t.shape)})"
        )
    if not torch.isfinite(t).all():
        raise DataError(f"{source}: '{key}' contains NaN or infinite values")
    return t


def _covs_from_stds(value: Any, k: int, dim: int, source: str) -> Tensor:
    """'stds': [K] scalars (isotropic) or [K][D] (diagonal) -> covariances [K, D, D]."""
    try:
        stds = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            f"{source}: 'stds' must be a list of numbers or of length-D lists"
        ) from None
    if stds.shape == (k,):
        stds = stds[:, None].expand(k, dim)
    if stds.shape != (k, dim):
        raise DataError(
            f"{source}: 'stds' has shape {list(stds.shape)}; expected [{k}] or [{k}, {dim}]"
        )
    if not (torch.isfinite(stds).all() and (stds > 0).all()):
        raise DataError(f"{source}: 'stds' must all be finite and > 0")
    return torch.diag_embed(stds**2)


def _check_spd(covs: Tensor, source: str) -> None:
    """Raise DataError unless every Sigma_k is symmetric positive definite."""
    for i, s in enumerate(covs):
        if (s - s.T).abs().max() > _SYMMETRY_RTOL * s.abs().max():
            raise DataError(f"{source}: 'covariances'[{i}] is not symmetric")
        if torch.linalg.cholesky_ex(s).info != 0:
            raise DataError(f"{source}: 'covariances'[{i}] is not positive definite")
