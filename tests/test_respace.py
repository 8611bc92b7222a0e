"""Respacing [ND21] Sec. 4: step selection, the respaced schedule, its time map and its ELBO."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.likelihood.elbo import elbo_terms
from ddpm.likelihood.evaluate import mean_se
from ddpm.likelihood.oracles import GaussianOracle, gaussian_analysis, gaussian_elbo_terms
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion, identity_time_map
from ddpm.process.respace import respace, respaced_steps, space_timesteps, steps_by_K, steps_label
from ddpm.process.reverse import Parameterisation, p_from_output
from ddpm.process.schedule import NoiseSchedule


@pytest.mark.parametrize(
    "T, K, expected",
    [
        # 0-based indices round(k (T-1)/(K-1)), then + 1 (our steps are 1-based)
        (10, 3, [1, 5, 10]),  # stride 4.5: 0, 4.5 -> 4 (half to even), 9
        (6, 3, [1, 3, 6]),  # stride 2.5: 0, 2.5 -> 2, 5
        (8, 3, [1, 5, 8]),  # stride 3.5: 0, 3.5 -> 4, 7
        (6, 5, [1, 2, 3, 5, 6]),  # stride 1.25: 0, 1.25, 2.5 -> 2, 3.75 -> 4, 5
        (4, 3, [1, 3, 4]),  # stride 1.5: 0, 1.5 -> 2, 3
        (1000, 3, [1, 501, 1000]),  # stride 499.5: 499.5 -> 500
        (1000, 4, [1, 334, 667, 1000]),  # stride 333
        (1000, 10, [1 + 111 * k for k in range(10)]),  # stride 111
        (5, 1, [1]),  # one section of one step keeps index 0
        (7, 7, [1, 2, 3, 4, 5, 6, 7]),
    ],
)
def test_space_timesteps_matches_hand_derived_cases(T, K, expected):
    assert space_timesteps(T, K) == expected


@pytest.mark.parametrize("T, K", [(10, 11), (10, 0), (0, 1)])
def test_space_timesteps_rejects_impossible_counts(T, K):
    with pytest.raises(ConfigError, match="steps|must be an integer"):
        space_timesteps(T, K)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respace_to_T_is_the_same_process(name):
    d = Diffusion(NoiseSchedule.from_name(name, 1000), Parameterisation("v", "learned"))
    r = respace(d, 1000)
    assert torch.allclose(r.schedule.beta, d.schedule.beta, rtol=0, atol=1e-12)
    assert torch.equal(r.time_map, identity_time_map(1000))
    t = torch.arange(1, 1001)
    assert torch.equal(r.net_t(t), t)
    assert r.param == d.param


@pytest.mark.parametrize("name, K", [("linear", 10), ("linear", 37), ("cosine", 50)])
def test_respaced_alpha_bar_is_the_original_at_tau(name, K):
    d = Diffusion(NoiseSchedule.from_name(name, 1000))
    tau = torch.tensor(space_timesteps(1000, K))
    r = respace(d, K)
    assert r.T == K
    ab, ab_r = d.schedule.alpha_bar, r.schedule.alpha_bar
    # A schedule stores beta, so alpha'_k = 1 - beta'_k carries a relative rounding error of
    # about eps / alpha'_k (large only where the cosine schedule nearly ends in one step).
    eps = torch.finfo(torch.float64).eps
    rtol = 1e-13 + 4 * eps * (1 / r.schedule.alpha[1:]).sum()
    assert ((ab_r[1:] / ab[tau] - 1).abs() <= rtol).all()
    assert ab_r[0] == 1
    # beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}, alpha_bar_{tau_0} = 1
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[tau[:-1]]])
    assert torch.allclose(r.schedule.beta[1:], 1 - ab[tau] / prev, rtol=1e-10, atol=0)
    # its own posterior variance and the usual decoder-variance convention at k = 1
    bt = (1 - prev[1:]) / (1 - ab[tau[1:]]) * r.schedule.beta[2:]
    assert torch.allclose(r.schedule.beta_tilde[2:], bt, rtol=1e-10, atol=0)
    assert r.schedule.sigma2_small[1] == r.schedule.beta_tilde[2]
    # the network still sees the original step
    assert torch.equal(r.net_t(torch.arange(1, K + 1)), tau)


def test_respace_composes_with_an_existing_time_map():
    """A foreign model numbering its steps 0..T-1: the respaced process calls it at tau_k - 1."""
    T = 50
    d = Diffusion(NoiseSchedule.linear(T), time_map=torch.arange(-1, T))
    r = respace(d, 8)
    tau = torch.tensor(space_timesteps(T, 8))
    assert torch.equal(r.net_t(torch.arange(1, 9)), tau - 1)
    twice = respace(r, 3)  # respacing a respaced process picks among its K steps
    picked = tau[torch.tensor(space_timesteps(8, 3)) - 1]
    assert torch.equal(twice.net_t(torch.arange(1, 4)), picked - 1)
    assert torch.allclose(twice.schedule.alpha_bar[1:], d.schedule.alpha_bar[picked], rtol=1e-12)


def test_learned_variance_interpolates_between_the_respaced_beta_and_beta_tilde():
    """[ND21] eq. (15) on the respaced schedule: u = 1 gives beta'_k, u = 0 beta_tilde'_k."""
    r = respace(Diffusion(NoiseSchedule.linear(200), Parameterisation("eps", "learned")), 10)
    s = r.schedule
    t = torch.arange(2, 11)
    xt = torch.zeros(len(t), 1, dtype=torch.float64)
    for u, target in ((1.0, s.beta), (-1.0, s.beta_tilde)):
        out = torch.cat([torch.zeros_like(xt), torch.full_like(xt, u)], dim=1)
        p = p_from_output(r, out, xt, t)
        assert torch.allclose(p.log_var[:, 0], target[t].log(), rtol=1e-12)


@pytest.mark.parametrize("variance, K", [("small", 10), ("large", 6)])
def test_respaced_elbo_of_gaussian_oracle_matches_the_closed_form(variance, K):
    """The full process's Bayes-optimal denoiser, called at the original steps tau_k, is the
    Bayes-optimal denoiser of the respaced process: its K-step -ELBO (Monte Carlo over x_t)
    matches gaussian_analysis on the respaced schedule within 4 standard errors."""
    g = torch.Generator().manual_seed(0)
    full = NoiseSchedule.linear(400)
    m = torch.tensor([0.5, -0.3], dtype=torch.float64)
    sd = torch.tensor([0.5, 0.2], dtype=torch.float64)
    r = respace(Diffusion(full, Parameterisation("eps", variance)), K)
    oracle = GaussianOracle(full, m, sd)
    an = gaussian_analysis(r.schedule, m, sd, variance)
    x0 = m + sd * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    model = Model(r, oracle, DataSpec(name="x", shape=(2,), levels=None))
    terms = elbo_terms(model, x0, generator=g)
    assert terms.kl.shape == (4000, K - 1)
    mean, se = mean_se(terms.total())
    assert abs(mean - an.neg_elbo) < 4 * se
    # Paired with E[-ELBO | x_0] in closed form, only the x_t draws are left in the SE: the
    # respaced closed form matches, the full process's (a different bound) does not.
    diff, diff_se = mean_se(terms.total() - gaussian_elbo_terms(an, x0).total())
    assert abs(diff) < 4 * diff_se
    other = gaussian_elbo_terms(gaussian_analysis(full, m, sd, variance), x0).total()
    assert abs(mean_se(terms.total() - other)[0]) > 8 * diff_se


# improved-diffusion's space_timesteps (respace.py there), written out line by line: 0-based
# indices, ValueError where it refuses.
def improved_diffusion_space_timesteps(num_timesteps: int, section_counts: str) -> set[int]:
    if section_counts.startswith("ddim"):
        desired_count = int(section_counts[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired_count:
                return set(range(0, num_timesteps, stride))
        raise ValueError(f"cannot create exactly {num_timesteps} steps with an integer stride")
    section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        if section_count <= 1:
            frac_stride = 1
        else:
            frac_stride = (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


def assert_same_steps_as_improved_diffusion(T: int, spelling: str) -> None:
    """Our steps are its 0-based indices + 1; where it refuses (or keeps nothing), we refuse."""
    try:
        expected = improved_diffusion_space_timesteps(T, spelling)
    except ValueError:
        expected = set()
    if not expected:
        with pytest.raises(ConfigError):
            respaced_steps(T, spelling)
    else:
        assert respaced_steps(T, spelling) == sorted(i + 1 for i in expected), (T, spelling)


def test_one_count_is_improved_diffusions_single_section_for_every_K():
    for T in range(1, 121):
        for K in range(1, T + 1):
            assert_same_steps_as_improved_diffusion(T, str(K))
            assert respaced_steps(T, K) == respaced_steps(T, str(K)) == space_timesteps(T, K)
    for K in range(1, 1001, 7):
        assert_same_steps_as_improved_diffusion(1000, str(K))


def test_section_counts_are_improved_diffusions_sections():
    rng = random.Random(0)
    for case in [(10, "3,3"), (12, "3,2"), (1000, "10,15,20"), (7, "0,2,1"), (5, "1,1,1,1,1")]:
        assert_same_steps_as_improved_diffusion(*case)
    for _ in range(3000):
        T = rng.randint(1, 1200)
        counts = [rng.randint(0, max(1, T // rng.randint(1, 6))) for _ in range(rng.randint(1, 5))]
        assert_same_steps_as_improved_diffusion(T, ",".join(map(str, counts)))


def test_ddim_spelling_is_improved_diffusions_integer_stride():
    for T in range(1, 81):
        for K in range(1, T + 2):
            assert_same_steps_as_improved_diffusion(T, f"ddim{K}")
    for K in range(1, 1002, 3):
        assert_same_steps_as_improved_diffusion(1000, f"ddim{K}")
    assert respaced_steps(1000, "ddim50") == [1 + 20 * k for k in range(50)]  # stride 20


def test_sections_match_hand_derived_cases():
    # T = 12 in sections of 6: stride 2.5 over 0..5 -> 0, 2 (2.5 half to even), 5; then 6, 11
    assert respaced_steps(12, "3,2") == [1, 3, 6, 7, 12]
    # T = 10 in sections of 4, 3, 3 (the first T mod 3 = 1 section one longer)
    assert respaced_steps(10, "2,1,0") == [1, 4, 5]


DIFFUSERS = importlib.util.find_spec("diffusers") is not None


@pytest.mark.skipif(not DIFFUSERS, reason="diffusers is not installed: no scheduler to compare")
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacings_are_diffusers_set_timesteps(spacing):
    """Our steps are diffusers' DDIMScheduler timesteps + 1 (steps_offset 0). Where its float
    'trailing' arange yields K + 1 timesteps, the last -1, there is no K-step set: refused."""
    from diffusers import DDIMScheduler

    refused = 0
    for T in (*range(1, 41), 100, 257, 1000):
        sched = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
        for K in range(1, T + 1):
            sched.set_timesteps(K)
            t = sched.timesteps.tolist()
            if len(t) != K or min(t) < 0:
                assert spacing == "trailing" and len(t) == K + 1 and t[-1] == -1
                with pytest.raises(ConfigError, match="-1"):
                    respaced_steps(T, K, spacing)
                refused += 1
            else:
                assert respaced_steps(T, K, spacing) == sorted(i + 1 for i in t), (T, K)
                assert respaced_steps(T, str(K), spacing) == respaced_steps(T, K, spacing)
    assert (refused > 0) == (spacing == "trailing")


def test_the_default_differs_from_linspace_only_at_exact_half_integer_ties():
    """np.linspace(0, T - 1, K) and improved-diffusion's accumulated stride both aim at
    round(k (T - 1) / (K - 1)); they can differ only where that is exactly a half-integer (K
    odd), by one step, and do for 278 of the K in 1..1000 at T = 1000 (the README's numbers)."""
    for T in range(2, 160):
        for K in range(2, T + 1):
            ours, lin = respaced_steps(T, K), respaced_steps(T, K, "linspace")
            for k, (a, b) in enumerate(zip(ours, lin, strict=True)):
                if a != b:
                    assert K % 2 == 1 and (2 * k * (T - 1)) % (K - 1) == 0, (T, K, k)
                    assert ((2 * k * (T - 1)) // (K - 1)) % 2 == 1 and abs(a - b) == 1
    differ = [
        K for K in range(1, 1001) if respaced_steps(1000, K) != respaced_steps(1000, K, "linspace")
    ]
    assert len(differ) == 278 and differ[0] == 21
    ours, lin = respaced_steps(1000, 21), respaced_steps(1000, 21, "linspace")
    assert [(a, b) for a, b in zip(ours, lin, strict=True) if a != b] == [(500, 501)]


def test_spacings_match_hand_derived_cases():
    # T = 12, K = 4: linspace 0, 11/3, 22/3, 11 -> 0, 4, 7, 11; leading r = 3; trailing 12, 9, 6, 3
    assert respaced_steps(12, 4, "linspace") == [1, 5, 8, 12]
    assert respaced_steps(12, 4, "leading") == [1, 4, 7, 10]
    assert respaced_steps(12, 4, "trailing") == [3, 6, 9, 12]
    assert respaced_steps(1000, 1, "trailing") == [1000] and respaced_steps(1000, 1) == [1]


@pytest.mark.parametrize(
    "T, steps, spacing, message",
    [
        (10, "3,3", "leading", "spacing 'leading' applies to one count K, not to '3,3'"),
        (10, "ddim5", "linspace", "applies to one count K, not to 'ddim5'"),
        (10, 5, "middle", "unknown spacing 'middle'"),
        (10, "5x", None, "steps '5x': give a count K ('50'), section counts"),
        (10, "ddim", None, "steps 'ddim': give"),
        (10, "-3", None, "steps '-3': give"),
        (10, "3,", None, "steps '3,': give"),
        (10, 2.5, None, "steps 2.5: give"),
        (10, True, None, "steps True: give"),
        (10, "0", None, "K must be an integer >= 1 (got 0)"),
        (10, "11", None, "cannot respace 10 steps into 11: choose K between 1 and 10"),
        (10, 11, "trailing", "cannot respace 10 steps into 11"),
        (10, "0,0", None, "section counts [0, 0] keep no step"),
        (12, "7,1", None, "cannot respace section 1 of 2 (6 of the 12 steps) into 7"),
        (12, "ddim5", None, "ddim5: no integer stride takes exactly 5 of 12 steps; nearest "
         "that do: ddim4, ddim6"),
        (1000, "ddim1", None, "nearest that do: ddim2"),
        (1000, 61, "trailing", "spacing 'trailing' gives 62 timesteps for K = 61 of 1000"),
    ],
)  # fmt: skip
def test_bad_spellings_give_one_clear_line(T, steps, spacing, message):
    with pytest.raises(ConfigError) as e:
        respaced_steps(T, steps, spacing)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_respace_takes_every_spelling():
    d = Diffusion(NoiseSchedule.linear(100))
    for steps, spacing in [("ddim10", None), ("5,3", None), (7, "trailing"), ("8", "leading")]:
        tau = torch.tensor(respaced_steps(100, steps, spacing))
        r = respace(d, steps, spacing)
        assert r.T == len(tau) and torch.equal(r.net_t(torch.arange(1, r.T + 1)), tau)
        assert torch.allclose(r.schedule.alpha_bar[1:], d.schedule.alpha_bar[tau], rtol=1e-12)
    # trailing ends at T: the respaced prior is the full process's
    last = respace(d, 7, "trailing").schedule.alpha_bar[-1].item()
    assert last == pytest.approx(d.schedule.alpha_bar[100].item(), rel=1e-12)


def test_steps_by_K_keeps_one_spelling_per_K():
    chosen = steps_by_K(12, ["ddim4", "3,2", "ddim4", " 3,2 "])
    assert chosen == {4: ("ddim4", [1, 4, 7, 10]), 5: ("3,2", [1, 3, 6, 7, 12])}
    assert steps_by_K(12, [4, "4"], "leading") == {4: ("4", [1, 4, 7, 10])}
    with pytest.raises(ConfigError, match="'ddim4' and '2,2' both give K = 4 but keep different"):
        steps_by_K(12, ["ddim4", "2,2"])


def test_steps_label_names_files_by_spelling_and_spacing():
    assert steps_label(50) == "50" and steps_label("10,15,20") == "10-15-20"
    assert steps_label("ddim50") == "ddim50" and steps_label(50, "trailing") == "50_trailing"
