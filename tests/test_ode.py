"""The likelihood of the probability-flow ODE against closed forms: the Bayes-optimal flow of
Gaussian data carries the marginals exactly, a zero network's flow is a known linear map, and
Hutchinson's estimator is unbiased within its standard error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ddpm.cli.main import main
from ddpm.data import DataSpec, GaussianMixture
from ddpm.data.toys import gmm8
from ddpm.errors import ConfigError
from ddpm.likelihood.ode import (
    OdeConfig,
    ProbabilityFlow,
    divergence,
    flow_log_prob,
    ode_likelihood,
)
from ddpm.model import Model
from ddpm.nets.mlp import MLP
from ddpm.nets.unet import UNet
from ddpm.process.continuous import (
    ContinuousMixtureOracle,
    ContinuousSchedule,
    gaussian_flow_marginal,
)
from ddpm.process.diffusion import Diffusion
from ddpm.process.gaussian import gaussian_log_prob
from ddpm.process.reverse import Parameterisation
from ddpm.process.rng import KeyedNoise
from ddpm.process.schedule import NoiseSchedule

F64 = torch.float64
K_SE = 4  # Monte Carlo tolerance in standard errors
TIGHT = OdeConfig(rtol=1e-8, atol=1e-8)
# Global error of a solve at tolerances 1e-8: a few 1e-8 (relative and absolute) in practice;
# 100x that is still far below the smallest effect the tests tell apart (the N(0, I) prior
# against the exact q_{s_end}: > 1e-3 nats here).
SOLVE_TOL = 1e-6


def gaussian(mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor, object]:
    m, sd = torch.tensor(mean, dtype=F64), torch.tensor(std, dtype=F64)
    return m, sd, GaussianMixture(torch.ones(1, dtype=F64), m[None], torch.diag(sd**2)[None])


def flow_of(name: str, T: int, prediction: str = "eps") -> ProbabilityFlow:
    s = NoiseSchedule.from_name(name, T)
    return ProbabilityFlow(
        Diffusion(s, Parameterisation(prediction)), ContinuousSchedule.of(name, s)
    )


def flow_model(flow: ProbabilityFlow, net, spec: DataSpec) -> Model:
    """The model whose probability flow is ``flow`` with network ``net``, on data ``spec``."""
    return Model(flow.diffusion, net, spec, continuous=flow.schedule)


def q_log_prob(cs: ContinuousSchedule, m, sd, x: torch.Tensor, s: float) -> torch.Tensor:
    """log q_s(x) for data N(m, diag(sd^2)): N(sqrt(ab) m, ab sd^2 + 1 - ab) per dimension."""
    s = torch.tensor(s, dtype=F64)
    ab, omab = cs.alpha_bar(s), cs.one_minus_alpha_bar(s)
    return gaussian_log_prob(x, ab.sqrt() * m, (ab * sd**2 + omab).log()).sum(dim=-1)


@pytest.mark.parametrize("name, s_min", [("linear", None), ("cosine", None), ("linear", 1e-5)])
def test_bayes_optimal_flow_carries_the_gaussian_marginals_exactly(name, s_min):
    """For every example: int div v ds + log q_{s_end}(x(s_end)) = log q_{s_min}(x), and the
    reported log p_ODE(x) (prior N(0, I)) is the closed-form N(x; M, V) of the flow."""
    m, sd, mix = gaussian([0.5, -1.0], [0.5, 0.1])
    flow = flow_of(name, 1000)
    cfg = OdeConfig(rtol=1e-8, atol=1e-8, s_min=s_min)
    oracle = ContinuousMixtureOracle(flow.schedule, mix)
    x = m + sd * torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    sol = flow_log_prob(flow, oracle, x, cfg)
    s0, s1 = flow.s_min(cfg), flow.schedule.s_end
    carried = sol.delta_log_prob[:, 0] + q_log_prob(flow.schedule, m, sd, sol.x_end, s1)
    torch.testing.assert_close(
        carried, q_log_prob(flow.schedule, m, sd, x, s0), rtol=SOLVE_TOL, atol=SOLVE_TOL
    )
    M, V = gaussian_flow_marginal(flow.schedule, m, sd, s0, s1)
    exact = gaussian_log_prob(x, M, V.log()).sum(dim=-1)
    torch.testing.assert_close(sol.log_prob, exact, rtol=SOLVE_TOL, atol=SOLVE_TOL)
    # the prior N(0, I) is a different model from q_{s_end}: the test can tell them apart
    mismatch = sol.prior_log_prob - q_log_prob(flow.schedule, m, sd, sol.x_end, s1)
    assert float(mismatch.abs().max()) > 1000 * SOLVE_TOL
    assert 20 < sol.nfe < 2000


def test_bayes_optimal_flow_carries_the_marginals_of_a_mixture_exactly():
    """gmm8 (8 modes, a non-linear flow): the diffused mixture's density is exact at every s,
    so int div v ds + log q_{s_end}(x(s_end)) = log q_{s_min}(x) per example."""
    mix = gmm8()
    flow = flow_of("linear", 1000)
    oracle = ContinuousMixtureOracle(flow.schedule, mix)
    x = mix.sample(4, generator=torch.Generator().manual_seed(0))
    sol = flow_log_prob(flow, oracle, x, TIGHT)
    ab = flow.schedule.alpha_bar(torch.tensor([flow.s_min(TIGHT), 1.0], dtype=F64))
    carried = sol.delta_log_prob[:, 0] + mix.diffused(float(ab[1])).log_prob(sol.x_end)
    expected = mix.diffused(float(ab[0])).log_prob(x)
    torch.testing.assert_close(carried, expected, rtol=SOLVE_TOL, atol=SOLVE_TOL)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_parameterisation_gives_the_same_flow(prediction):
    m, sd, mix = gaussian([0.3], [0.7])
    x = torch.tensor([[-1.0], [0.2], [1.5]], dtype=F64)
    ref = flow_log_prob(
        flow_of("linear", 100),
        ContinuousMixtureOracle(ContinuousSchedule.of("linear", NoiseSchedule.linear(100)), mix),
        x,
        TIGHT,
    )
    flow = flow_of("linear", 100, prediction)
    sol = flow_log_prob(flow, ContinuousMixtureOracle(flow.schedule, mix, prediction), x, TIGHT)
    torch.testing.assert_close(sol.log_prob, ref.log_prob, rtol=SOLVE_TOL, atol=SOLVE_TOL)


def zero_flow_log_prob(cs: ContinuousSchedule, x: torch.Tensor, s0: float, prediction: str):
    """Closed form for a network whose output is 0. eps: v = -1/2 beta x, so
    x(s1) = sqrt(ab(s1) / ab(s0)) x; x0: eps_hat = x / sqrt(1 - ab), v = 1/2 beta ab / (1 - ab) x,
    so x(s1) = sqrt((1 - ab(s1)) / (1 - ab(s0))) x. Either way log p = log N(x(s1); 0, I) + D log
    of the scale factor (a linear flow's divergence integral is D times its log-scale)."""
    s = torch.tensor([s0, cs.s_end], dtype=F64)
    level = cs.alpha_bar(s) if prediction == "eps" else cs.one_minus_alpha_bar(s)
    scale = (level[1] / level[0]).sqrt()
    x_end = (scale * x).flatten(1)
    return gaussian_log_prob(x_end, 0 * x_end, 0 * x_end).sum(1) + x_end.shape[1] * scale.log()


@pytest.mark.parametrize("prediction, variance", [("eps", "small"), ("x0", "learned")])
def test_zero_network_flow_matches_its_closed_form_and_sees_float_time(prediction, variance):
    """A freshly initialised MLP outputs exactly 0 (zero output layer); the flow then has a
    closed form. The network is called at t = s T, floats in [T s_min, T s_end]."""
    T = 50
    s = NoiseSchedule.linear(T)
    flow = ProbabilityFlow(
        Diffusion(s, Parameterisation(prediction, variance)), ContinuousSchedule.of("linear", s)
    )
    torch.manual_seed(0)
    net = MLP(2, 2 * (2 if variance == "learned" else 1), hidden=16, depth=1).double()
    seen = []

    def model(x, t):
        seen.append(t)
        return net(x, t)

    x = torch.tensor([[0.3, -0.4], [1.2, 0.8]], dtype=F64)
    sol = flow_log_prob(flow, model, x, TIGHT)
    expected = zero_flow_log_prob(flow.schedule, x, 1 / T, prediction)
    torch.testing.assert_close(sol.log_prob, expected, rtol=SOLVE_TOL, atol=SOLVE_TOL)
    t = torch.cat(seen)
    assert t.is_floating_point() and float(t.min()) >= 1 - 1e-12 and float(t.max()) <= T + 1e-12
    assert len({round(float(v), 6) for v in t}) > 10  # times between the integer steps too


def test_hutchinson_divergence_is_unbiased_within_its_standard_error():
    """A correlated Gaussian's flow has a non-diagonal Jacobian, so the estimator has variance;
    the mean of many Rademacher probes matches the exact divergence within K_SE SEs."""
    cov = torch.tensor([[0.5, 0.4], [0.4, 0.6]], dtype=F64)
    mix = GaussianMixture(
        torch.ones(1, dtype=F64), torch.tensor([[0.2, -0.3]], dtype=F64), cov[None]
    )
    flow = flow_of("linear", 100)
    oracle = ContinuousMixtureOracle(flow.schedule, mix)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, generator=g, dtype=F64).requires_grad_(True)
    v = flow.velocity(oracle, x, 0.3)
    exact = divergence(v, x)[:, 0]
    probes = (2 * torch.randint(0, 2, (3, 2000, 2), generator=g) - 1).to(F64)
    est = divergence(v, x, probes)  # [3, 2000]
    se = est.std(dim=1) / math.sqrt(est.shape[1])
    assert bool((se > 0).all())
    assert bool(((est.mean(dim=1) - exact).abs() < K_SE * se).all())


def test_hutchinson_likelihood_matches_the_exact_one_within_its_probe_se():
    cov = torch.tensor([[0.5, 0.4], [0.4, 0.6]], dtype=F64)
    mix = GaussianMixture(
        torch.ones(1, dtype=F64), torch.tensor([[0.2, -0.3]], dtype=F64), cov[None]
    )
    flow = flow_of("linear", 100)
    oracle = ContinuousMixtureOracle(flow.schedule, mix)
    spec = DataSpec("corr", (2,), None)
    x = mix.sample(8, generator=torch.Generator().manual_seed(2))
    cfg = OdeConfig(rtol=1e-6, atol=1e-6)
    model = flow_model(flow, oracle, spec)
    exact = ode_likelihood(model, x, cfg)
    hutch = ode_likelihood(
        model,
        x,
        OdeConfig(rtol=1e-6, atol=1e-6, divergence="hutchinson", probes=16),
        torch.Generator().manual_seed(3),
    )
    assert exact.divergence == "exact" and hutch.divergence == "hutchinson" and hutch.probes == 16
    assert hutch.probe_se > 0
    diff = hutch.neg_log_likelihood - exact.neg_log_likelihood
    assert abs(diff) < K_SE * hutch.probe_se


def test_image_flow_with_hutchinson_and_a_zero_unet():
    """A zero-output U-Net's Jacobian is -1/2 beta I: Rademacher probes give z^T z = D exactly,
    so Hutchinson's estimate equals the closed form to the solver's tolerance."""
    T = 20
    s = NoiseSchedule.linear(T)
    flow = ProbabilityFlow(Diffusion(s), ContinuousSchedule.of("linear", s))
    torch.manual_seed(0)
    net = UNet(1, 1, 4, channels=8, channel_mults=(1,), attn_resolutions=())
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    spec = DataSpec("img", (1, 4, 4), None)
    res = ode_likelihood(
        flow_model(flow, net, spec),
        x,
        OdeConfig(rtol=1e-7, atol=1e-7, divergence="hutchinson", probes=2),
    )
    assert res.divergence == "hutchinson" and res.probes == 2
    expected = -zero_flow_log_prob(flow.schedule, x.double(), 1 / T, "eps")
    torch.testing.assert_close(res.per_example, expected, rtol=0, atol=1e-4)  # float32 network


def test_discrete_data_is_dequantized_with_its_correction_and_scaling_in_raw_units():
    """-log P(x_0) is bounded by -log p_ODE(x_0 + w (u - 1/2)) - D log w with the same u; for
    continuous data the log-Jacobian of the scaling is subtracted as in the ELBO."""
    m, sd, mix = gaussian([0.1, -0.2], [0.6, 0.4])
    flow = flow_of("linear", 100)
    oracle = ContinuousMixtureOracle(flow.schedule, mix)
    M, V = gaussian_flow_marginal(flow.schedule, m, sd, 1 / 100, 1.0)
    spec = DataSpec.from_levels("pix", (2,), 5)  # values -1, -0.5, 0, 0.5, 1; w = 0.5
    x0 = torch.tensor([[-1.0, 0.5], [0.0, 0.0], [1.0, -0.5]], dtype=F64)
    res = ode_likelihood(
        flow_model(flow, oracle, spec), x0, TIGHT, torch.Generator().manual_seed(5)
    )
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # u = Phi(z)
    y = x0 + 0.5 * (u - 0.5)
    expected = -gaussian_log_prob(y, M, V.log()).sum(1) - 2 * math.log(0.5)
    torch.testing.assert_close(res.per_example, expected, rtol=SOLVE_TOL, atol=SOLVE_TOL)
    assert res.dequantization == pytest.approx(-2 * math.log(0.5))
    scaled = DataSpec("raw", (2,), None, shift=1.0, scale=3.0)
    res = ode_likelihood(flow_model(flow, oracle, scaled), x0, TIGHT)
    expected = -gaussian_log_prob(x0, M, V.log()).sum(1) + 2 * math.log(3.0)
    torch.testing.assert_close(res.per_example, expected, rtol=SOLVE_TOL, atol=SOLVE_TOL)
    assert res.bits_per_dim == pytest.approx(res.neg_log_likelihood / (2 * math.log(2)))


def test_results_do_not_depend_on_the_batching_or_on_the_other_examples():
    """Keyed noise: dequantization and probes of an example are functions of its index (a
    correlated Gaussian, so that the probes matter)."""
    cov = torch.tensor([[0.5, 0.4], [0.4, 0.6]], dtype=F64)
    mix = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 2, dtype=F64), cov[None])
    flow = flow_of("cosine", 50)
    oracle = ContinuousMixtureOracle(flow.schedule, mix)
    x = mix.sample(7, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    spec = DataSpec.from_levels("pix", (2,), 9)
    x = (x * 4).round() / 4  # on the grid of 9 levels in [-1, 1]
    cfg = OdeConfig(rtol=1e-8, atol=1e-8, divergence="hutchinson", probes=2)
    model = flow_model(flow, oracle, spec)
    whole = ode_likelihood(model, x, cfg, KeyedNoise(3))
    parts = ode_likelihood(model, x, cfg, KeyedNoise(3), max_batch=3)
    first = ode_likelihood(model, x[:3], cfg, KeyedNoise(3))
    assert parts.batches == 3 and whole.batches == 1 and whole.probe_se > 0
    torch.testing.assert_close(parts.per_example, whole.per_example, rtol=SOLVE_TOL, atol=SOLVE_TOL)
    torch.testing.assert_close(
        first.per_example, whole.per_example[:3], rtol=SOLVE_TOL, atol=SOLVE_TOL
    )
    other = ode_likelihood(model, x, cfg, KeyedNoise(4))
    assert float((other.per_example - whole.per_example).abs().max()) > 1e-3  # the seed matters


def test_ode_config_round_trips_and_rejects_bad_values():
    cfg = OdeConfig(rtol=1e-4, atol=1e-6, method="DOP853", divergence="hutchinson", probes=4)
    assert OdeConfig.from_dict(cfg.to_dict()) == cfg
    assert OdeConfig.from_json(OdeConfig().to_json()) == OdeConfig()
    for kwargs, msg in [
        ({"rtol": 0.0}, "tolerances must be > 0"),
        ({"probes": 0}, "probes K must be an integer >= 1"),
        ({"method": "euler"}, "unknown ODE method 'euler'"),
        ({"divergence": "trace"}, "unknown divergence 'trace'"),
        ({"s_min": 1.5}, r"s_min must lie in \(0, 1\)"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            OdeConfig(**kwargs)
    assert (
        OdeConfig().divergence_for(2) == "exact" and OdeConfig().divergence_for(64) == "hutchinson"
    )


# --- the command line -------------------------------------------------------------------------


def test_theory_gaussian_ode_matches_its_closed_form(tmp_path, capsys):
    """The Bayes-optimal flow's mean -log p_ODE over n draws estimates E_q[-log N(x; M, V)]."""
    args = ["theory", "gaussian", "--dim", "2", "--diffusion-steps", "50", "-n", "200", "--iw", "1"]
    assert main([*args, "--ode", "--json", "--out", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    ode = doc["ode"]
    assert ode["divergence"] == "exact" and ode["nfe"] > 0 and ode["s_min"] == 1 / 50
    expected = doc["closed_form"]["ode_neg_log_likelihood"]
    assert abs(ode["neg_log_likelihood"] - expected) < K_SE * ode["neg_log_likelihood_se"]
    assert ode["bits_per_dim"] == pytest.approx(ode["neg_log_likelihood"] / (2 * math.log(2)))


def test_evaluate_ode_on_a_digits_run_is_dequantized(tmp_path, capsys):
    out = tmp_path / "digits"
    tiny = ["--diffusion-steps", "5", "--max-steps", "2", "--batch-size", "8",
            "--channels", "8", "--quiet"]  # fmt: skip
    assert main(["train", "--out", str(out), *tiny, "--num-samples", "2"]) == 0
    capsys.readouterr()
    flags = ["--ode", "--ode-probes", "2", "--ode-rtol", "1e-3", "--ode-atol", "1e-3"]
    assert main(["evaluate", str(out), "-n", "4", *flags, "--json", "--out", str(tmp_path)]) == 0
    ode = json.loads(capsys.readouterr().out)["ode"]
    assert ode["divergence"] == "hutchinson" and ode["probes"] == 2 and ode["n"] == 4
    assert ode["dequantization"] == pytest.approx(-64 * math.log(2 / 16))  # 17 levels
    assert math.isfinite(ode["neg_log_likelihood"]) and ode["probe_se"] >= 0
    assert main(["evaluate", str(out), "-n", "4", *flags, "--out", str(tmp_path)]) == 0
    assert "-log p_ODE(x0)" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--ode", "--ode-method", "euler"]) == 2
    assert "unknown ODE method 'euler'" in capsys.readouterr().err
