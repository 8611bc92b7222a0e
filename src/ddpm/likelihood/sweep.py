"""View 4, many easy problems, measured: the bound of a Bayes-optimal model against the number of
steps T.

For each T of a list and each reverse variance (small beta_tilde_t, large beta_t, or the exact
'optimal' beta_tilde_t + c_t^2 Var(x_0|x_t) of [BLZ22]) the Bayes-optimal model of data of known
density is evaluated by the same evaluator as trained networks (``theory.theory_gaussian`` /
``theory.theory_mixture``: -ELBO with L_T, the diffusion KLs, L_0, H(q(x_0)) and
KL(q(x_{0:T}) || p_theta(x_{0:T})) = E[-ELBO] - H), and the joint KL is also measured step by
step against the true reverse kernels (``joint_kl``), whose standard error shrinks with the KL.
For Gaussian data every quantity also has a closed form (``oracles.gaussian_analysis``).

With fixed variances the bound does not become tight as T grows: near t = 0 neither beta_t nor
beta_tilde_t is the true Var(x_{t-1} | x_t). With the optimal variance every reverse step becomes
nearly Gaussian as T grows and the joint KL falls towards the prior term KL(q(x_T) || p(x_T)).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [BLZ22] Bao, Li, Zhu, Zhang. Analytic-DPM: an Analytic Estimate of the Optimal Reverse
            Variance in Diffusion Probabilistic Models. arXiv:2201.06503
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ddpm.errors import ConfigError
from ddpm.likelihood import theory
from ddpm.likelihood.joint_kl import JointKl, joint_kl
from ddpm.likelihood.oracles import ORACLE_VARIANCES, GaussianOracle, MixtureOracle
from ddpm.likelihood.theory import oracle_model
from ddpm.model import Model
from ddpm.process.diffusion import Parameterisation
from ddpm.process.rng import seeded_generator
from ddpm.process.schedule import NoiseSchedule
from ddpm.progress import progress_bar
from ddpm.requests import TheoryRequest

THRESHOLDS = (0.1, 0.01)  # nats: where the sweep reports the first T with KL_joint below


@dataclass(frozen=True)
class SweepPoint:
    """One (variance, T): the evaluator's report (closed forms for Gaussian data) and the
    step-wise joint KL."""

    T: int
    variance: str
    report: theory.TheoryResult
    joint: JointKl
    seconds: float

    def kl_joint(self) -> tuple[float, float]:
        """The best KL_joint there is: the closed form (SE 0) for Gaussian data, else the
        step-wise estimate with its SE."""
        cf = self.report.closed_form
        if cf is not None:
            return cf["kl_joint"], 0.0
        return self.joint.total, self.joint.total_se

    def to_dict(self) -> dict:
        d = self.report.to_dict()
        d.update(T=self.T, variance=self.variance, joint_kl=self.joint.to_dict())
        d["sweep_seconds"] = self.seconds
        return d


@dataclass(frozen=True)
class Sweep:
    """A T-sweep of the Bayes-optimal model for each variance (points variance-major)."""

    name: str
    points: tuple[SweepPoint, ...]

    @property
    def variances(self) -> list[str]:
        return list(dict.fromkeys(p.variance for p in self.points))

    def curve(self, variance: str) -> list[SweepPoint]:
        return sorted((p for p in self.points if p.variance == variance), key=lambda p: p.T)

    def first_T_below(self, variance: str, threshold: float) -> dict | None:
        """The smallest T from which on (at every larger T of the sweep too) KL_joint is below
        ``threshold``, with its value and SE; ``resolved`` when value + 2 SE < threshold. None
        if the largest T is not below."""
        found = None
        for p in reversed(self.curve(variance)):
            value, se = p.kl_joint()
            if not value < threshold:
                break
            found = {"T": p.T, "kl_joint": value, "se": se, "resolved": value + 2 * se < threshold}
        return found

    def to_dict(self) -> dict:
        below = {
            v: {str(th): self.first_T_below(v, th) for th in THRESHOLDS} for v in self.variances
        }
        return {
            "subject": self.name,
            "sweep": [p.to_dict() for p in self.points],
            "kl_joint_below": below,
        }


SWEEP_N = 300  # examples per (T, variance) when the request names none: minutes up to T = 5000


def _check(request: TheoryRequest) -> tuple[list[int], TheoryRequest]:
    Ts = sorted(set(request.T))
    for v in request.variance:
        if v not in ORACLE_VARIANCES:
            raise ConfigError(f"variance {v!r}: a Bayes-optimal sweep uses small, large or optimal")
    return Ts, dataclasses.replace(request, n=request.n or SWEEP_N)


def _point(request: TheoryRequest, T: int, variance: str) -> TheoryRequest:
    return dataclasses.replace(request, T=(T,), variance=(variance,))


def sweep_gaussian(request: TheoryRequest | None = None, progress: bool = False) -> Sweep:
    """Gaussian data N(mean, std^2 I_dim) at every T and variance of the request: closed forms
    beside the evaluator's estimates and the step-wise joint KL, on the same n examples for
    every T."""
    Ts, request = _check(request or TheoryRequest())
    points = []
    for variance, T in _grid(request.variance, Ts, progress):
        start = time.perf_counter()
        res = theory.theory_gaussian(_point(request, T, variance))
        s = NoiseSchedule.from_name(request.schedule, T)
        m, sd, density, spec = theory.gaussian_data(request.dim, request.mean, request.std)
        oracle = GaussianOracle(s, m, sd, variance=variance)
        joint = _joint(
            oracle_model(s, oracle, spec, Parameterisation("eps", variance)), density, request
        )
        points.append(SweepPoint(T, variance, res, joint, time.perf_counter() - start))
    return Sweep(name=points[0].report.name, points=tuple(points))


def sweep_mixture(
    name: str = "gmm8", request: TheoryRequest | None = None, progress: bool = False
) -> Sweep:
    """A Gaussian mixture (gmm8 or a JSON spec) at every T and variance of the request: Monte
    Carlo with SE (the evaluator on n examples, and the step-wise joint KL)."""
    Ts, request = _check(request or TheoryRequest())
    mixture, spec = theory.load_mixture(name)
    points = []
    for variance, T in _grid(request.variance, Ts, progress):
        start = time.perf_counter()
        res = theory.theory_mixture(name, _point(request, T, variance))
        s = NoiseSchedule.from_name(request.schedule, T)
        oracle = MixtureOracle(s, mixture, variance=variance)
        joint = _joint(
            oracle_model(s, oracle, spec, Parameterisation("eps", variance)), mixture, request
        )
        points.append(SweepPoint(T, variance, res, joint, time.perf_counter() - start))
    return Sweep(name=spec.name, points=tuple(points))


def _grid(variances: Sequence[str], Ts: list[int], progress: bool):
    """(variance, T) pairs, variance-major, with a progress bar weighted by T (the cost)."""
    with progress_bar(len(variances) * sum(Ts), "T-sweep", "t", enabled=progress) as bar:
        for variance in variances:
            for T in Ts:
                bar.set_postfix_str(f"{variance}, T = {T}")
                yield variance, T
                bar.update(T)


def _joint(model: Model, density, request: TheoryRequest) -> JointKl:
    """The step-wise joint KL of an oracle on n fresh draws from density (seeded)."""
    g = seeded_generator(request.seed)
    x0 = density.sample(request.n, generator=g)
    return joint_kl(model, density, x0, g)
