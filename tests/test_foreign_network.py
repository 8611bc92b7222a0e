"""Any network from Python: ``Process`` + ``from_network`` against models built the existing way.

The Bayes-optimal denoiser of Gaussian data (``GaussianOracle``) is the network: wrapped under
each time convention it must score exactly like the model built by hand, and its -ELBO must
match the closed form. Probe networks record the time they are fed; schedules given as betas,
alpha_bar or by name must agree to the precision of their arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ddpm
from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.foreign.network import Process, from_network, named_schedule_of
from ddpm.likelihood.elbo import ElboTerms, elbo_terms
from ddpm.likelihood.oracles import GaussianOracle, gaussian_analysis
from ddpm.model import Model, p_mean_var
from ddpm.process.continuous import ContinuousSchedule
from ddpm.process.diffusion import Diffusion, Parameterisation
from ddpm.process.rng import KeyedNoise
from ddpm.process.schedule import NoiseSchedule

T = 20
EPS32 = float(torch.finfo(torch.float32).eps)
EPS64 = float(torch.finfo(torch.float64).eps)
GAUSS = DataSpec(name="gaussian2d", shape=(2,), levels=None)
MEAN = torch.tensor([0.5, -0.3], dtype=torch.float64)
STD = torch.tensor([0.5, 1.2], dtype=torch.float64)
IMAGE = DataSpec.from_levels("img", (1, 4, 4), 256)


def gaussian_x0(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MEAN + STD * torch.randn(n, 2, generator=g, dtype=torch.float64)


def by_hand(schedule: NoiseSchedule) -> Model:
    """The Bayes-optimal model built the existing way: Diffusion + Model, identity time."""
    oracle = GaussianOracle(schedule, MEAN, STD)
    return Model(Diffusion(schedule, Parameterisation("eps", "small")), oracle, GAUSS)


def assert_same_terms(a: ElboTerms, b: ElboTerms) -> None:
    for name in ElboTerms.FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# --- the same model as built by hand -----------------------------------------------------------
def test_a_named_schedule_gives_the_model_built_by_hand():
    s = NoiseSchedule.linear(T)
    mine = from_network(by_hand(s).net, Process(schedule="linear", T=T), GAUSS)
    assert torch.equal(mine.diffusion.schedule.beta, s.beta)
    assert mine.diffusion.time_map is None and mine.diffusion.param == Parameterisation()
    assert mine.continuous == ContinuousSchedule.of("linear", s)
    x0 = gaussian_x0(300)
    assert_same_terms(
        elbo_terms(mine, x0, KeyedNoise(0)), elbo_terms(by_hand(s), x0, KeyedNoise(0))
    )


class OracleAt(nn.Module):
    """The oracle behind another time convention: it maps the time it reads back to the step."""

    def __init__(self, oracle: nn.Module, to_step) -> None:
        super().__init__()
        self.oracle, self.to_step = oracle, to_step

    def forward(self, x, t):
        return self.oracle(x, self.to_step(t))


USER_TIMES = torch.linspace(0.0, 1.0, T)  # a network that reads t as a fraction in [0, 1]
CONVENTIONS = {
    "index": ("index", lambda k: k + 1),
    "rescaled": ("rescaled", lambda s: (s * T / 1000).round().long() + 1),
    "tensor": (USER_TIMES, lambda u: (u * (T - 1)).round().long() + 1),
}


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_each_time_convention_scores_like_the_model_built_by_hand(convention):
    time, to_step = CONVENTIONS[convention]
    s = NoiseSchedule.cosine(T)
    net = OracleAt(by_hand(s).net, to_step)
    mine = from_network(net, Process(betas=s.beta[1:], schedule="cosine", time=time), GAUSS)
    x0 = gaussian_x0(200, seed=1)
    assert_same_terms(
        elbo_terms(mine, x0, KeyedNoise(3)), elbo_terms(by_hand(s), x0, KeyedNoise(3))
    )


def test_the_bayes_optimal_network_has_the_closed_form_elbo():
    """E[-ELBO] of the Bayes-optimal eps for N(MEAN, diag(STD^2)) data, (G1)-(G4) of the
    oracles, against the mean over 4000 examples: within 4 standard errors."""
    s = NoiseSchedule.linear(T)
    model = from_network(by_hand(s).net, Process(betas=s.beta[1:].tolist()), GAUSS)
    total = elbo_terms(model, gaussian_x0(4000, seed=2), KeyedNoise(1)).total()
    se = total.std() / total.numel() ** 0.5
    assert abs(total.mean() - gaussian_analysis(s, MEAN, STD).neg_elbo) < 4 * se


# --- time conventions --------------------------------------------------------------------------
class Probe(nn.Module):
    """Records the network time it is fed; returns zeros of x's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("time", ["step", "index", "rescaled", "tensor"])
def test_the_network_reads_the_time_of_its_convention(time):
    T = 7  # 1000 / 7 is no float32 number: the rescaled time is rounded
    k = torch.arange(T, dtype=torch.float64)  # t - 1 for t = 1..T
    user = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0])
    expected = {"step": k + 1, "index": k, "rescaled": k * 1000 / T, "tensor": user.double()}
    probe = Probe()
    process = Process(schedule="linear", T=T, time=user if time == "tensor" else time)
    model = from_network(probe, process, IMAGE, check=False)
    t = torch.arange(1, T + 1)
    p_mean_var(model, torch.zeros(T, *IMAGE.shape), t)
    (seen,) = probe.seen
    assert seen.dtype == (torch.long if time in ("step", "index") else torch.float32)
    torch.testing.assert_close(seen.double(), expected[time], rtol=EPS32, atol=0)


def test_a_time_between_steps_reads_the_map_linearly():
    """The ODE's floating t: the map interpolated, and continued linearly below t = 1."""
    user = torch.tensor([10.0, 20.0, 40.0])
    d = Process(schedule="cosine", T=3, time=user).diffusion()
    t = torch.tensor([0.5, 1.5, 2.25], dtype=torch.float64)
    assert d.net_t(t).tolist() == [5.0, 15.0, 25.0]
    index = Process(schedule="cosine", T=3, time="index").diffusion()
    assert index.net_t(torch.tensor([0.5, 2.5], dtype=torch.float64)).tolist() == [-0.5, 1.5]


# --- schedules ---------------------------------------------------------------------------------
def test_float32_betas_are_cast_exactly_and_alpha_bar_gives_the_same_schedule():
    b32 = torch.linspace(1e-4, 0.05, 50, dtype=torch.float32)
    from_betas = Process(betas=b32).noise_schedule
    assert torch.equal(from_betas.beta[1:], b32.double())
    alpha_bar = torch.cumprod(1 - b32.double(), 0)
    from_alpha_bar = Process(alpha_bar=alpha_bar).noise_schedule
    # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}: the product and the ratio round once each,
    # so beta_t is off by at most ~2 eps64 in absolute terms
    torch.testing.assert_close(from_alpha_bar.beta, from_betas.beta, rtol=0, atol=4 * EPS64)
    torch.testing.assert_close(from_alpha_bar.alpha_bar[1:], alpha_bar, rtol=100 * EPS64, atol=0)
    assert torch.equal(Process(betas=b32.double().tolist()).noise_schedule.beta, from_betas.beta)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_betas_of_a_named_schedule_in_float32_carry_its_continuous_form(name):
    s = NoiseSchedule.from_name(name, 1000)
    b32 = s.beta[1:].float()
    assert named_schedule_of(b32.double()) == name
    p = Process(betas=b32, schedule=name)
    assert torch.equal(p.noise_schedule.beta[1:], b32.double())
    assert p.continuous() == ContinuousSchedule.of(name, p.noise_schedule)
    assert Process(betas=b32).continuous() is None  # not named: no ODE
    assert torch.equal(Process(schedule=name, T=1000).noise_schedule.beta, s.beta)


def test_betas_that_do_not_follow_the_named_schedule_are_refused():
    assert named_schedule_of(torch.linspace(1e-3, 0.2, 10, dtype=torch.float64)) is None
    off = NoiseSchedule.linear(100).beta[1:] * (1 + 1e-4)  # far outside float32 rounding
    with pytest.raises(ConfigError, match="do not follow the 'linear' schedule") as e:
        Process(betas=off, schedule="linear")
    assert e.value.params == ("schedule", "betas")


# --- errors ------------------------------------------------------------------------------------
B = [0.1, 0.2, 0.3]
BAD_PROCESSES = [
    (dict(betas=B, alpha_bar=[0.9]), ("betas", "alpha_bar"), "not both"),
    (dict(), ("betas", "alpha_bar", "schedule", "T"), "give betas, alpha_bar, or schedule"),
    (dict(schedule="linear"), ("betas", "alpha_bar", "schedule", "T"), "with T"),
    (dict(schedule="quadratic", T=5), ("schedule",), "unknown schedule 'quadratic'"),
    (dict(schedule="linear", T=0), ("T",), "T must be an integer >= 1"),
    (dict(betas=B, T=4), ("T", "betas"), "T = 4 but betas has 3 entries"),
    (dict(betas=[0.1, 1.0]), ("betas",), "beta_2 = 1.0"),
    (dict(betas=[[0.1, 0.2]]), ("betas",), "must be a vector"),
    (dict(betas="0.1"), ("betas",), "must be a vector"),
    (dict(alpha_bar=[0.9, 0.95]), ("alpha_bar",), "alpha_bar_2 = 0.95 after 0.9"),
    (dict(alpha_bar=[1.0, 0.5]), ("alpha_bar",), "alpha_bar_1 = 1.0 after 1.0"),
    (dict(betas=B, prediction="noise"), ("prediction",), "unknown prediction 'noise'"),
    (dict(betas=B, variance="optimal"), ("variance",), "unknown variance 'optimal'"),
    (dict(betas=B, time="seconds"), ("time",), "unknown time 'seconds'"),
    (dict(betas=B, time=[1.0, 2.0]), ("time",), "vector of T = 3 numbers"),
    (dict(betas=B, time=[1.0, float("nan"), 2.0]), ("time",), "NaN"),
]


@pytest.mark.parametrize("kwargs, params, words", BAD_PROCESSES)
def test_a_bad_process_names_its_field(kwargs, params, words):
    with pytest.raises(ConfigError, match=None) as e:
        Process(**kwargs)
    assert words in str(e.value) and e.value.params == params


class Conv(nn.Module):
    def __init__(self, c_out: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, c_out, 1)

    def forward(self, x, t):
        return self.conv(x)


def test_an_output_of_the_wrong_shape_is_refused_at_construction():
    learned = Process(schedule="linear", T=5, variance="learned")
    with pytest.raises(ConfigError, match=r"returned \(1, 1, 4, 4\).*needs \(1, 2, 4, 4\)"):
        from_network(Conv(1), learned, IMAGE)
    assert from_network(Conv(2), learned, IMAGE).diffusion.param.out_mult == 2
    with pytest.raises(ConfigError, match=r"returned \(1, 2, 4, 4\).*needs \(1, 1, 4, 4\)"):
        from_network(Conv(2), Process(schedule="linear", T=5), IMAGE)


def test_the_shape_check_leaves_batch_norm_statistics_and_the_mode_alone():
    net = nn.Module()
    net.norm = nn.BatchNorm1d(2)
    net.forward = lambda x, t: net.norm(x + 5)
    net.train()
    from_network(net, Process(schedule="linear", T=5), GAUSS)
    assert net.training and torch.equal(net.norm.running_mean, torch.zeros(2))


def test_clip_and_names():
    p = Process(schedule="linear", T=5)
    assert from_network(Conv(), p, IMAGE, clip=True).clip == (-1.0, 1.0)
    assert from_network(Conv(), p, IMAGE).clip is None
    assert from_network(Conv(), p, IMAGE, clip=(-2, 3)).clip == (-2.0, 3.0)
    model = from_network(Conv(), p, IMAGE)
    assert model.name == "Conv" and model.source.kind == "python"
    assert from_network(Conv(), p, IMAGE, name="mine").name == "mine"
    with pytest.raises(ConfigError, match="continuous data") as e:
        from_network(lambda x, t: x, p, GAUSS, clip=True)
    assert e.value.params == ("clip",)
    with pytest.raises(ConfigError, match="clip must be True, False or a pair"):
        from_network(Conv(), p, IMAGE, clip="yes")


@pytest.mark.parametrize(
    "args, param",
    [
        ((Conv(), "linear", IMAGE), "process"),
        ((42, Process(schedule="linear", T=5), IMAGE), "net"),
        ((Conv(), Process(schedule="linear", T=5), (1, 4, 4)), "data"),
    ],
)
def test_from_network_refuses_arguments_of_the_wrong_kind(args, param):
    with pytest.raises(ConfigError) as e:
        from_network(*args)
    assert e.value.params == (param,)


def test_the_names_are_exported():
    assert ddpm.Process is Process and ddpm.from_network is from_network
