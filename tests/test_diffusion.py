"""The Diffusion value: the network sees the mapped time, and nothing else depends on it."""

from __future__ import annotations

import pytest
import torch
from reference import LinearDenoiser

from ddpm.config import DiffusionConfig
from ddpm.data import DataSpec
from ddpm.errors import ConfigError
from ddpm.likelihood.bounds import iw_log_weights
from ddpm.likelihood.elbo import elbo_terms
from ddpm.model import Model
from ddpm.process.diffusion import Diffusion, Parameterisation, denoise
from ddpm.process.schedule import NoiseSchedule
from ddpm.sampling.ancestral import sample
from ddpm.training.losses import training_loss

T, D = 6, 3
SPEC = DataSpec("x", (D,), None)  # continuous D-dimensional data


class OnScaledTime:
    """The same network fed 10 t instead of t (a foreign model's time convention)."""

    def __init__(self, model) -> None:
        self.model, self.seen = model, []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.clone())
        return self.model(x, t / 10)


def test_denoise_feeds_the_mapped_time():
    s = NoiseSchedule.linear(T)
    d = Diffusion(s, time_map=10.0 * torch.arange(T + 1, dtype=torch.float64))
    net = OnScaledTime(lambda x, t: x * t[:, None])
    t = torch.tensor([1, 4, 6])
    out = denoise(d, net, torch.ones(3, D, dtype=torch.float64), t)
    torch.testing.assert_close(net.seen[0], 10.0 * t.double(), rtol=0, atol=0)
    torch.testing.assert_close(out, t[:, None].double().expand(3, D), rtol=0, atol=0)
    assert torch.equal(Diffusion(s).net_t(t), t)  # identity when no map is given


@pytest.mark.parametrize("variance", ["small", "large"])
def test_a_time_map_changes_nothing_but_the_network_input(variance):
    # The same network under two time conventions gives bit-identical likelihoods and samples.
    s = NoiseSchedule.linear(T)
    param = Parameterisation("eps", variance)
    model = LinearDenoiser(D, param.out_mult, T, seed=1)
    plain = Diffusion(s, param)
    mapped = Diffusion(s, param, time_map=10.0 * torch.arange(T + 1, dtype=torch.float64))
    foreign = OnScaledTime(model)
    x0 = torch.randn(5, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def g() -> torch.Generator:
        return torch.Generator().manual_seed(3)

    on_plain, on_mapped = Model(plain, model, SPEC), Model(mapped, foreign, SPEC)
    a = elbo_terms(on_plain, x0, generator=g())
    b = elbo_terms(on_mapped, x0, generator=g())
    assert torch.equal(a.per_timestep, b.per_timestep) and torch.equal(a.prior_kl, b.prior_kl)
    wa = iw_log_weights(on_plain, x0, K=2, generator=g())
    wb = iw_log_weights(on_mapped, x0, K=2, generator=g())
    assert torch.equal(wa, wb)
    xa = sample(on_plain, 4, generator=g()).x0
    xb = sample(on_mapped, 4, generator=g()).x0
    assert torch.equal(xa, xb)
    assert all(bool((t % 10 == 0).all()) and bool((t >= 10).all()) for t in foreign.seen)


def test_training_loss_refuses_a_config_that_contradicts_the_diffusion():
    cfg = DiffusionConfig(T=T, prediction="x0")
    d = Diffusion.of(DiffusionConfig(T=T))
    x0, t = torch.zeros(2, D), torch.tensor([1, 2])
    with pytest.raises(ConfigError, match="predicts 'eps' with variance 'small' but the config"):
        training_loss(Model(d, lambda x, tt: x, SPEC), cfg, x0, t, None)


def test_time_map_length_is_checked():
    with pytest.raises(ConfigError, match="time_map must have length T \\+ 1 = 7"):
        Diffusion(NoiseSchedule.linear(T), time_map=torch.arange(T))
