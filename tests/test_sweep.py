"""The bound against the number of steps: the exact reverse variance of the Bayes-optimal models,
the step-wise joint KL, the T-sweep and the per-step gap of a model to the Bayes-optimal one,
against closed forms, independent Gaussian conditioning, grids and Monte Carlo with SE."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ddpm.cli.main import main
from ddpm.config import DiffusionConfig
from ddpm.data import DataSpec, GaussianMixture
from ddpm.data.toys import gmm8
from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import elbo_terms
from ddpm.likelihood.evaluate import coarse_to_fine, evaluate
from ddpm.likelihood.joint_kl import joint_kl, step_log_ratios
from ddpm.likelihood.oracles import (
    ORACLE_VARIANCES,
    GaussianOracle,
    MixtureOracle,
    gaussian_analysis,
    gaussian_posterior_var,
)
from ddpm.likelihood.sweep import sweep_gaussian, sweep_mixture
from ddpm.likelihood.theory import TheoryResult, gaussian_data, half_band
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.rng import KeyedNoise
from ddpm.process.schedule import NoiseSchedule
from ddpm.requests import TheoryRequest

K_SE = 4
F64 = torch.float64


def issue_gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((2,), 0.3, dtype=F64), torch.full((2,), 0.5, dtype=F64)


def one_component(m: torch.Tensor, sd: torch.Tensor) -> GaussianMixture:
    return GaussianMixture(torch.ones(1, dtype=F64), m[None], torch.diag_embed(sd**2)[None])


def assert_within_se(value: float, se: float, expected: float) -> None:
    assert abs(value - expected) < K_SE * se, f"{value} ± {se} vs {expected}"


def p_theta(diffusion: Diffusion, denoiser, dim: int = 2) -> Model:
    """The model of ``denoiser`` under ``diffusion`` on continuous data in R^dim."""
    return Model(diffusion, denoiser, DataSpec(name="x", shape=(dim,), levels=None))


# --- fixed variances do not become tight as T grows -----------------------------------------


@pytest.mark.parametrize(
    ("variance", "T", "expected"),
    [
        ("small", 100, 2.54),
        ("small", 1000, 1.14),
        ("small", 20000, 0.91),
        ("large", 100, 0.07),
        ("large", 20000, 0.30),
    ],
)
def test_joint_kl_of_fixed_variances_stays_away_from_zero(variance, T, expected):
    """KL_joint in closed form for N(0.3, 0.5^2 I_2), linear schedule, to two decimals."""
    an = gaussian_analysis(NoiseSchedule.linear(T), *issue_gaussian(), variance)
    assert round(an.kl_joint, 2) == expected
    assert an.kl_joint == pytest.approx(an.neg_elbo - an.entropy, rel=1e-10)


def test_near_t0_the_fixed_variances_miss_the_true_reverse_variance():
    """The per-step closed-form KLs of 'small' sit in the first steps; 'optimal' has none."""
    s = NoiseSchedule.linear(1000)
    small = gaussian_analysis(s, *issue_gaussian(), "small").reverse_kl
    assert small[:10].sum() > 0.5 * small.sum()
    assert gaussian_analysis(s, *issue_gaussian(), "optimal").reverse_kl.abs().max() < 1e-12


# --- the optimal variance ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1, 2, 10, 100, 1000])
def test_with_the_optimal_variance_the_joint_kl_is_the_prior_term(schedule, T):
    s = NoiseSchedule.from_name(schedule, T)
    m, sd = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    an = gaussian_analysis(s, m, sd, "optimal")
    # KL(q(x_T) || N(0, I)) written out independently, in numpy
    ab = float(s.alpha_bar[T])
    mu, var = math.sqrt(ab) * m.numpy(), ab * sd.numpy() ** 2 + (1 - ab)
    prior = float(np.sum(0.5 * (var + mu**2 - 1 - np.log(var))))
    assert an.kl_prior_marginal == pytest.approx(prior, rel=1e-9, abs=1e-15)
    assert an.kl_joint == pytest.approx(prior, rel=1e-9, abs=1e-15)
    # the same from (G4): E[-ELBO] = H + KL(q(x_T) || p(x_T)), up to rounding of O(1) sums
    assert an.neg_elbo == pytest.approx(an.entropy + prior, rel=1e-12)
    assert an.kl_joint >= an.kl_marginal >= 0


def joint_gaussian_reverse_var(s, t: int, mean: float, std: float) -> float:
    """Var(x_{t-1} | x_t) by conditioning the joint Gaussian of (x_{t-1}, x_t) (numpy)."""
    ab_prev = float(s.alpha_bar[t - 1])
    alpha = float(s.alpha[t])
    var_prev = ab_prev * std**2 + (1 - ab_prev)  # Var(x_{t-1})
    cov = math.sqrt(alpha) * var_prev  # Cov(x_{t-1}, x_t)
    var_t = alpha * var_prev + (1 - alpha)  # Var(x_t)
    return var_prev - cov**2 / var_t


def test_gaussian_oracle_variance_is_the_conditional_variance_of_the_joint():
    s = NoiseSchedule.cosine(T=30)
    m, sd = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    oracle = GaussianOracle(s, m, sd, variance="optimal")
    t = torch.tensor([1, 2, 9, 30])
    xt = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = oracle(xt, t)
    assert out.shape == (4, 4)
    for i, ti in enumerate(t.tolist()):
        for d in range(2):
            expected = joint_gaussian_reverse_var(s, ti, m[d].item(), sd[d].item())
            assert math.exp(out[i, 2 + d].item()) == pytest.approx(expected, rel=1e-10)
    # the mean half is the fixed-variance oracle's output
    torch.testing.assert_close(out[:, :2], GaussianOracle(s, m, sd)(xt, t), rtol=0, atol=0)


def test_mixture_posterior_variance_matches_a_grid_in_1d():
    w, mu, sd = [0.3, 0.7], [-1.0, 1.5], [0.3, 0.6]
    mix = GaussianMixture(
        torch.tensor(w, dtype=F64),
        torch.tensor(mu, dtype=F64)[:, None],
        torch.tensor(sd, dtype=F64)[:, None, None] ** 2,
    )
    grid = np.linspace(-6, 6, 240_001)
    q0 = sum(
        wk * np.exp(-0.5 * ((grid - mk) / sk) ** 2) / sk
        for wk, mk, sk in zip(w, mu, sd, strict=True)
    )
    xs = np.linspace(-3, 3, 13)
    s = NoiseSchedule.linear(50)
    for t in (1, 5, 20, 50):
        ab = s.alpha_bar[t].item()
        post = q0 * np.exp(-0.5 * (xs[:, None] - math.sqrt(ab) * grid) ** 2 / (1 - ab))
        mean = (post * grid).sum(1) / post.sum(1)
        var = (post * (grid - mean[:, None]) ** 2).sum(1) / post.sum(1)
        got_mean, got_var = mix.posterior_x0(torch.tensor(xs, dtype=F64)[:, None], ab)
        np.testing.assert_allclose(got_mean[:, 0].numpy(), mean, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(got_var[:, 0].numpy(), var, rtol=1e-6, atol=1e-10)
        # the oracle's log sigma_t^2: beta_tilde_t + c_t^2 Var(x_0 | x_t)
        oracle = MixtureOracle(s, mix, variance="optimal")
        out = oracle(torch.tensor(xs, dtype=F64)[:, None], torch.full((13,), t))
        expected = s.beta_tilde[t].item() + s.posterior_coef_x0[t].item() ** 2 * var
        np.testing.assert_allclose(out[:, 1].exp().numpy(), expected, rtol=1e-6)


def test_one_component_mixture_variance_is_the_gaussian_one():
    s = NoiseSchedule.linear(40)
    m, sd = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    xt = torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.arange(1, 41)
    got = MixtureOracle(s, one_component(m, sd), "x0", "optimal")(xt, t)
    torch.testing.assert_close(got, GaussianOracle(s, m, sd, "x0", "optimal")(xt, t))
    ab, omab = s.alpha_bar[t][:, None], s.one_minus_alpha_bar[t][:, None]
    expected = gaussian_posterior_var(ab, omab, sd)
    _, var = one_component(m, sd).posterior_x0(xt, s.alpha_bar[t])
    torch.testing.assert_close(var, expected, rtol=1e-10, atol=1e-14)


def test_trained_networks_cannot_ask_for_the_optimal_variance():
    with pytest.raises(ConfigError, match="^variance 'optimal' is the exact posterior variance"):
        DiffusionConfig(variance="optimal")
    assert Parameterisation(variance="optimal").out_mult == 2


# --- the step-wise joint KL -------------------------------------------------------------------


def test_step_log_ratios_vanish_when_every_step_is_exact():
    """Gaussian data and the optimal variance: p_theta(x_{t-1}|x_t) IS q(x_{t-1}|x_t)."""
    s = NoiseSchedule.cosine(25)
    m, sd = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    g = torch.Generator().manual_seed(2)
    x0 = one_component(m, sd).sample(50, generator=g)
    d = Diffusion(s, Parameterisation("eps", "optimal"))
    model = p_theta(d, GaussianOracle(s, m, sd, variance="optimal"))
    for t in (1, 2, 13, 25):
        r = step_log_ratios(model, one_component(m, sd), x0, torch.full((50,), t), g)
        assert r.abs().max() < 1e-9


@pytest.mark.parametrize("variance", ["small", "large", "optimal"])
def test_joint_kl_matches_the_closed_form_step_by_step(variance):
    s = NoiseSchedule.linear(20)
    m, sd = issue_gaussian()
    an = gaussian_analysis(s, m, sd, variance)
    density = one_component(m, sd)
    g = torch.Generator().manual_seed(3)
    x0 = density.sample(2000, generator=g)
    res = joint_kl(
        p_theta(
            Diffusion(s, Parameterisation("eps", variance)),
            GaussianOracle(s, m, sd, variance=variance),
        ),
        density,
        x0,
        g,
    )
    assert_within_se(res.total, res.total_se, an.kl_joint)
    assert_within_se(res.prior, res.prior_se, an.kl_prior_marginal)
    per_t, se = torch.tensor(res.per_timestep), torch.tensor(res.per_timestep_se)
    exact = per_t - an.reverse_kl
    if variance == "optimal":
        assert exact.abs().max() < 1e-9
    else:
        assert bool((exact.abs() < K_SE * se).all()), (exact / se).tolist()


@pytest.mark.parametrize(("variance", "T", "n"), [("small", 15, 1500), ("optimal", 200, 300)])
def test_joint_kl_equals_the_paired_elbo_gap_on_a_mixture(variance, T, n):
    """E[-ELBO] - H(q) and the step-wise estimate measure the same KL (gmm8); where the steps
    are nearly exact (optimal variance, T = 200) the step-wise estimate is far less noisy."""
    s = NoiseSchedule.linear(T)
    mix = gmm8()
    g = torch.Generator().manual_seed(4)
    x0 = mix.sample(n, generator=g)
    d = Diffusion(s, Parameterisation("eps", variance))
    model = p_theta(d, MixtureOracle(s, mix, variance=variance))
    steps = joint_kl(model, mix, x0, g)
    paired = elbo_terms(model, x0, generator=g).total() + mix.log_prob(x0)
    paired_se = paired.std().item() / math.sqrt(len(paired))
    diff = paired.mean().item() - steps.total
    assert abs(diff) < K_SE * math.hypot(paired_se, steps.total_se)
    if variance == "optimal":
        assert steps.total_se < 0.5 * paired_se


# --- the sweep ----------------------------------------------------------------------------------


def test_gaussian_sweep_reports_closed_forms_and_thresholds():
    request = TheoryRequest(T=(5, 2, 5), variance=ORACLE_VARIANCES, mean=0.3, n=40, iw=(), seed=1)
    sw = sweep_gaussian(request)
    assert [(p.variance, p.T) for p in sw.points] == [
        (v, T) for v in ("small", "large", "optimal") for T in (2, 5)
    ]
    for p in sw.points:
        an = gaussian_analysis(NoiseSchedule.linear(p.T), *issue_gaussian(), p.variance)
        assert p.kl_joint() == (an.kl_joint, 0.0)
        assert p.report.closed_form["kl_prior_marginal"] == an.kl_prior_marginal
        ev = p.report.subject
        assert_within_se(ev.neg_elbo, ev.neg_elbo_se, an.neg_elbo)
    d = json.loads(json.dumps(sw.to_dict()))
    assert len(d["sweep"]) == 6 and d["sweep"][0]["T"] == 2
    assert d["kl_joint_below"]["optimal"]["0.01"]["T"] == 2
    assert d["kl_joint_below"]["small"]["0.1"] is None


def test_mixture_sweep_first_T_below_uses_the_step_wise_estimate():
    sw = sweep_mixture("gmm8", TheoryRequest(T=(3, 40), variance=("optimal",), n=60, iw=(), seed=2))
    big = sw.curve("optimal")[-1]
    assert big.kl_joint() == (big.joint.total, big.joint.total_se)
    hit = sw.first_T_below("optimal", 1e9)
    assert hit["T"] == 3
    assert sw.first_T_below("optimal", -1.0) is None


def test_sweep_command_writes_json_and_figure(tmp_path, capsys):
    out = tmp_path / "sw"
    code = main(
        ["theory", "gaussian", "--sweep", "--diffusion-steps", "2", "4", "--variance", "small",
         "optimal", "-n", "20", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "optimal: KL_joint < 0.01 nats from T = 2" in text
    d = json.loads((out / "sweep.json").read_text())
    assert [p["T"] for p in d["sweep"]] == [2, 4, 2, 4]
    assert (out / "sweep.png").stat().st_size > 0
    bad = ["theory", "gmm8", "--sweep", "--diffusion-steps", "2", "3", "--variance", "learned"]
    assert main(bad) == 2
    assert "small, large or optimal" in capsys.readouterr().err


# --- where a model loses its nats -------------------------------------------------------------


def test_half_band_is_the_shortest_run_holding_half():
    assert half_band(torch.tensor([0.0, 0.0, 5.0, 5.0, 0.0, 0.0])) == (3, 3)
    assert half_band(torch.tensor([1.0, 1.0, 1.0, 1.0])) == (1, 2)
    assert half_band(torch.tensor([2.0, -1.0, 2.0, 1.5])) == (3, 4)  # 3.5 >= 2.25 over 3..4
    assert half_band(torch.tensor([-1.0, 0.5])) == (1, 2)  # no positive gap: everything


def test_per_step_gap_to_the_bayes_optimal_model_is_paired_and_sums_to_the_gap():
    s = NoiseSchedule.linear(12)
    mix = gmm8()
    x0 = mix.sample(400, generator=torch.Generator().manual_seed(5))
    mean = mix.weights @ mix.means
    sd = torch.einsum("k,kdd->d", mix.weights, mix.covs) + mix.weights @ mix.means**2 - mean**2
    wrong = GaussianOracle(s, mean, sd.sqrt())  # the moment-matched Gaussian's denoiser
    d = Diffusion(s, Parameterisation("eps", "small"))
    spec = gaussian_data(2, 0.0, 1.0)[3]
    evs = [
        evaluate(Model(d, net, spec).named(name), x0, generator=torch.Generator().manual_seed(6))
        for name, net in (("trained", wrong), ("bayes-optimal", MixtureOracle(s, mix)))
    ]
    res = TheoryResult("gmm8", subject=evs[0], oracle=evs[1])
    gap, se = res.gap_per_timestep()
    total, total_se = res.gap_to_oracle()
    assert gap.sum().item() == pytest.approx(total, rel=1e-10)
    assert total > K_SE * total_se  # the wrong denoiser is measurably worse
    # paired: far smaller SE than the two terms' own SEs combined
    own = torch.tensor(evs[0].per_timestep_se) ** 2 + torch.tensor(evs[1].per_timestep_se) ** 2
    assert bool((se[1:] < own[1:].sqrt()).all())
    band = res.gap_band()
    assert band["share"] >= 0.5 and 1 <= band["t_lo"] <= band["t_hi"] <= 12
    d = json.loads(json.dumps(res.to_dict()))
    assert len(d["gap_per_timestep"]) == 12 and d["gap_band"]["t_lo"] == band["t_lo"]


def test_prediction_errors_of_the_oracle_are_the_posterior_variance():
    """x0-MSE of E[x_0|x_t] is Var(x_0|x_t) per dimension; eps-MSE is ab/(1-ab) times it."""
    s = NoiseSchedule.linear(20)
    m, sd = torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    g = torch.Generator().manual_seed(7)
    x0 = one_component(m, sd).sample(3000, generator=g)
    spec = gaussian_data(2, 0.0, 1.0)[3]
    ev = evaluate(Model(Diffusion(s), GaussianOracle(s, m, sd), spec), x0, generator=g)
    ab, omab = s.alpha_bar[1:, None], s.one_minus_alpha_bar[1:, None]
    var = gaussian_posterior_var(ab, omab, sd).mean(dim=1)  # [T]
    eps_var = (ab / omab * gaussian_posterior_var(ab, omab, sd)).mean(dim=1)
    for key, exact in (("x0", var), ("eps", eps_var)):
        got = torch.tensor(getattr(ev, f"per_timestep_{key}_mse"))
        se = torch.tensor(getattr(ev, f"per_timestep_{key}_mse_se"))
        assert bool(((got - exact).abs() < K_SE * se).all()), key
    # coarse to fine: the largest t with x0-MSE <= f Var(x_0), from the curve itself
    marks = coarse_to_fine(ev)
    mse = torch.tensor(ev.per_timestep_x0_mse)
    for f, t in marks.items():
        below = (mse <= float(f) * ev.data_var).nonzero()
        assert t == (int(below.max()) + 1 if len(below) else None)
    assert "coarse_to_fine" in ev.to_dict()


# --- the Bayes-optimal model of a (respaced) process, beside a trained run ------------------


def test_bayes_optimal_model_of_a_respaced_process_reads_process_steps():
    """For a fixed variance the oracle on the respaced schedule equals the T-step oracle called
    through the time map; a learned variance gets the exact 'optimal' one."""
    from ddpm.likelihood.theory import bayes_optimal
    from ddpm.model import p_mean_var
    from ddpm.process.respace import respace

    s, mix = NoiseSchedule.linear(60), gmm8()
    d = respace(Diffusion(s, Parameterisation("v", "small")), 7)
    via_map_model = p_theta(d, MixtureOracle(s, mix, "v"))  # the T-step oracle through tau_k
    best = bayes_optimal(via_map_model, mix)
    od = best.diffusion
    assert od.time_map is None and od.param == Parameterisation("v", "small")
    xt = torch.randn(7, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    k = torch.arange(1, 8)
    via_map = p_mean_var(via_map_model, xt, k)
    direct = p_mean_var(best, xt, k)
    torch.testing.assert_close(direct.mean, via_map.mean, rtol=1e-10, atol=1e-12)
    learned_model = p_theta(Diffusion(s, Parameterisation("eps", "learned")), MixtureOracle(s, mix))
    learned = bayes_optimal(learned_model, mix).diffusion
    assert learned.param.variance == "optimal"


@pytest.fixture(scope="module")
def gmm8_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "gmm8"
    args = ["train", "--data", "gmm8", "--out", str(out), "--diffusion-steps", "12",
            "--max-steps", "20", "--batch-size", "32", "--hidden", "16", "--n-train", "200",
            "--n-test", "50", "--num-samples", "4", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return out


def test_theory_run_reports_the_per_step_gap_and_its_band(gmm8_run, tmp_path, capsys):
    assert main(["theory", str(gmm8_run), "-n", "30", "--iw", "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    d = json.loads((tmp_path / "theory.json").read_text())
    gap = torch.tensor(d["gap_per_timestep"], dtype=F64)
    assert gap.sum().item() == pytest.approx(d["gap_to_oracle"], rel=1e-9)
    b = d["gap_band"]
    assert f"half of the gap lies in t = {b['t_lo']}..{b['t_hi']} of 12" in text
    assert len(d["per_timestep_eps_mse"]) == 12 and len(d["oracle"]["per_timestep_x0_mse"]) == 12
    for name in ("theory_gap_per_timestep.png", "theory_mse.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_evaluate_steps_puts_the_bayes_optimal_model_beside_the_run(gmm8_run, tmp_path, capsys):
    from ddpm.jobs.evaluate import evaluate_steps_run
    from ddpm.likelihood.theory import bayes_optimal, load_mixture
    from ddpm.loader import load
    from ddpm.requests import EvaluationRequest

    request = EvaluationRequest(steps=("3", "12"), n=20)
    res = evaluate_steps_run(gmm8_run, request, out_dir=tmp_path)
    d = json.loads((tmp_path / "eval_test_steps.json").read_text())
    assert [r["K"] for r in d["oracle_steps"]] == [3, 12]
    assert res.oracle_path.stat().st_size > 0
    model = load(gmm8_run)
    from ddpm.data import load_dataset

    x0 = load_dataset(model.source.data).test[:20]
    best = bayes_optimal(model.respaced(3), load_mixture("gmm8")[0])
    ev = evaluate(best, x0, generator=KeyedNoise(0, torch.arange(20)))
    assert d["oracle_steps"][0]["neg_elbo"] == pytest.approx(ev.neg_elbo, rel=1e-10)
    # paired on the same x_t draws: trained minus optimal per example
    assert (
        d["steps"][1]["neg_elbo"]
        > d["oracle_steps"][1]["neg_elbo"] - 4 * d["steps"][1]["neg_elbo_se"]
    )
