"""Held-out validation during training: an unbiased -ELBO estimate on examples the model never
trains on, the best weights by it, and early stopping.

The split is fixed and the same for every seed and every run on the same data: the last
round(fraction * N) of a permutation of the N training examples drawn with
``np.random.default_rng(1)`` are held out (``validation_split``). The test split is untouched.

The estimate is ``elbo.elbo_mc`` with at most K timesteps per example, stratified on
``elbo.log_strata`` (as ``ddpm evaluate --mc K``): -ELBO = L_T + sum_k |S_k| L_{t_k - 1},
t_k uniform in stratum S_k of geometrically growing width [Ho20] eq. (5). Unbiased like the
estimate from K uniform timesteps, but the first strata hold the few small t whose terms dominate
the sum, so its standard error is many times smaller at the same cost. It is computed on the EMA
weights, in the units of ``ddpm evaluate`` (nats per example in the data's units; bits/dim).
Its noise is keyed (``ddpm.process.rng.KeyedNoise``) by (validation seed, example, k): every
validation of a run draws the same t_k and x_t, so two validations differ only through the weights
(a paired comparison; the SE printed is the one of a single estimate over examples and timesteps).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpm.errors import CheckpointError
from ddpm.likelihood.elbo import bits_per_dim, elbo_mc, log_strata
from ddpm.likelihood.stats import mean_se
from ddpm.model import Model
from ddpm.process.rng import KeyedNoise
from ddpm.training import dist

VALIDATION_SEED = 0  # keys the validation noise; fixed, so runs with any seed are comparable


def validation_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept for training, held out) of n training examples: the last
    max(1, round(fraction * n)) of a ``default_rng(1)`` permutation are held out."""
    n_val = min(max(1, round(fraction * n)), n - 1)
    perm = np.random.default_rng(1).permutation(n)
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val :])


@dataclass(frozen=True)
class ValidationEstimate:
    """-ELBO on the validation examples after ``step`` training steps (mean ± SE)."""

    step: int
    neg_elbo: float  # nats per example, data units
    neg_elbo_se: float
    bits_per_dim: float
    bits_per_dim_se: float
    seconds: float

    def to_log(self, best: bool) -> dict[str, Any]:
        """The record written to log.jsonl."""
        return {
            "step": self.step,
            "val_neg_elbo": round(self.neg_elbo, 6),
            "val_neg_elbo_se": round(self.neg_elbo_se, 6),
            "val_bpd": round(self.bits_per_dim, 6),
            "val_bpd_se": round(self.bits_per_dim_se, 6),
            "val_seconds": round(self.seconds, 3),
            "val_best": best,
        }


@torch.no_grad()
def estimate_neg_elbo(
    model: Model,
    x_val: Tensor,
    K: int,
    step: int,
    info: dist.DistInfo | None = None,
    max_batch: int = 4096,
) -> ValidationEstimate:
    """K-timestep Monte Carlo -ELBO of the model on x_val [N, ...] (model space, the data of
    ``model.spec``), keyed noise.

    Under torchrun each process estimates a contiguous shard and the per-example values are
    gathered, so every process returns the same estimate."""
    info = info or dist.DistInfo()
    t0 = time.perf_counter()
    start, stop = dist.shard(x_val.shape[0], info)
    noise = KeyedNoise(VALIDATION_SEED, torch.arange(start, stop))
    net, spec = model.net, model.spec
    was_training = getattr(net, "training", False)
    if isinstance(net, torch.nn.Module):
        net.eval()
    try:
        strata = log_strata(model.T, K)
        nelbo = elbo_mc(model, x_val[start:stop], K, noise, max_batch, strata)
    finally:
        if was_training:
            net.train()
    nelbo = dist.gather_rows(nelbo, info) - spec.log_jacobian_nats()  # [N], data units
    mean, se = mean_se(nelbo)
    bpd, bpd_se = bits_per_dim(mean, spec.num_dims), bits_per_dim(se, spec.num_dims)
    return ValidationEstimate(step, mean, se, bpd, bpd_se, time.perf_counter() - t0)


@dataclass(frozen=True)
class ValidationState:
    """What training remembers of its validations: the best estimate so far, where it was,
    how many validations since then did not improve on it, and whether it stopped early."""

    best: float = math.inf  # best -ELBO (nats per example)
    best_se: float = math.nan
    best_bpd: float = math.nan  # the same in bits/dim
    best_step: int = -1
    since_best: int = 0
    stopped_early: bool = False

    def after(self, est: ValidationEstimate) -> ValidationState:
        """The state after one more estimate (strictly lower is better)."""
        if est.neg_elbo < self.best:
            return replace(self, best=est.neg_elbo, best_se=est.neg_elbo_se,
                           best_bpd=est.bits_per_dim, best_step=est.step, since_best=0)  # fmt: skip
        return replace(self, since_best=self.since_best + 1)

    def out_of_patience(self, patience: int) -> bool:
        """True when the last ``patience`` validations did not improve (patience 0: never)."""
        return patience > 0 and self.since_best >= patience

    def with_patience(self, patience: int) -> ValidationState:
        """The state with stopped_early set as ``patience`` decides (a resume may raise it)."""
        return replace(self, stopped_early=self.out_of_patience(patience))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no inf/nan: a state with no validation yet stores nulls
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> ValidationState:
        if not isinstance(d, dict) or set(d) != {f for f in cls.__dataclass_fields__}:
            raise CheckpointError(f"checkpoint: damaged validation state {d!r}; train again")
        return cls(
            best=math.inf if d["best"] is None else float(d["best"]),
            best_se=math.nan if d["best_se"] is None else float(d["best_se"]),
            best_bpd=math.nan if d["best_bpd"] is None else float(d["best_bpd"]),
            best_step=int(d["best_step"]),
            since_best=int(d["since_best"]),
            stopped_early=bool(d["stopped_early"]),
        )
