"""The Diffusion value: the network sees the mapped time, and nothing else depends on it."""

from __future__ import annotations

import pytest
import torch
from reference import LinearDenoiser

from ddpm.bounds import iw_log_weights
from ddpm.config import DiffusionConfig
from ddpm.diffusion import Diffusion, Parameterisation, denoise
from ddpm.elbo import elbo_terms
from ddpm.errors import ConfigError
from ddpm.losses import training_loss
from ddpm.sampling import sample
from ddpm.schedule import NoiseSchedule

T, D = 6, 3


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

    a = elbo_terms(plain, model, x0, None, generator=g())
    b = elbo_terms(mapped, foreign, x0, None, generator=g())
    assert torch.equal(a.per_timestep, b.per_timestep) and torch.equal(a.prior_kl, b.prior_kl)
    wa = iw_log_weights(plain, model, x0, None, K=2, generator=g())
    wb = iw_log_weights(mapped, foreign, x0, None, K=2, generator=g())
    assert torch.equal(wa, wb)
    xa = sample(plain, model, (D,), 4, generator=g()).x0
    xb = sample(mapped, foreign, (D,), 4, generator=g()).x0
    assert torch.equal(xa, xb)
    assert all(bool((t % 10 == 0).all()) and bool((t >= 10).all()) for t in foreign.seen)


def test_training_loss_refuses_a_config_that_contradicts_the_diffusion():
    cfg = DiffusionConfig(T=T, prediction="x0")
    d = Diffusion.of(DiffusionConfig(T=T))
    x0, t = torch.zeros(2, D), torch.tensor([1, 2])
    with pytest.raises(ConfigError, match="predicts 'eps' with variance 'small' but the config"):
        training_loss(d, cfg, lambda x, tt: x, x0, t, None, None)


def test_time_map_length_is_checked():
    with pytest.raises(ConfigError, match="time_map must have length T \\+ 1 = 7"):
        Diffusion(NoiseSchedule.linear(T), time_map=torch.arange(T))
