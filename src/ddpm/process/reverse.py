"""Reverse process p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) with p(x_T) = N(0, I).

The network predicts one of (see ``Prediction``)
    eps:  eps_theta(x_t, t)                         [Ho20] eq. (11)
    x0:   x0_theta(x_t, t)
    v:    sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0        [SH22]
and the mean is the posterior mean with x_0 replaced by its prediction x0_hat:
    mu_theta = posterior_coef_x0[t] * x0_hat + posterior_coef_xt[t] * x_t    [Ho20] eqs. (7), (11)
Variances (``Variance``): 'small' sigma_t^2 = beta_tilde_t, 'large' sigma_t^2 = beta_t (both with
the decoder variance beta_tilde_2 at t = 1, see ``NoiseSchedule.sigma2_small``), or 'learned':
    log sigma_t^2 = u log beta_t + (1 - u) log beta_tilde_t,  u = (out + 1) / 2   [ND21] eq. (15)
where out is the network's second block of output channels; at t = 1 the range runs from the
decoder variance beta_tilde_2 to beta_1. 'optimal': the model emits log sigma_t^2 itself, per
example and dimension, as its second block of channels. The Bayes-optimal oracles
(``ddpm.likelihood.oracles``) use it for the exact reverse variance of [BLZ22]; trained networks
do not (``DiffusionConfig`` accepts only small, large and learned).

The network protocol: ``model(x_t, net_t)`` with x_t [B, *shape] and net_t the network's time
input for process step t [B] returns [B, out_mult * C, ...] (channel dim 1; for vectors
[B, out_mult * D]); out_mult = 2 for learned or model-supplied ('optimal') variances. Every
function here takes the process as one ``Diffusion`` (schedule, parameterisation, time map) and
calls the network only through ``ddpm.process.diffusion.denoise``.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [SH22] Salimans, Ho. Progressive Distillation for Fast Sampling of Diffusion Models.
    [BLZ22] Bao, Li, Zhu, Zhang. Analytic-DPM: an Analytic Estimate of the Optimal Reverse
            Variance in Diffusion Probabilistic Models. arXiv:2201.06503
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ddpm.errors import ConfigError
from ddpm.process.diffusion import Denoiser, Diffusion, Parameterisation
from ddpm.process.forward import eps_from_x0, x0_from_eps, x0_from_v


@dataclass(frozen=True)
class PTheta:
    """p_theta(x_{t-1} | x_t) for a batch, plus the predictions it was built from."""

    mean: Tensor  # [B, ...] mu_theta
    log_var: Tensor  # [B, ...] log sigma_t^2 (broadcast to the data shape)
    x0_hat: Tensor  # [B, ...]
    eps_hat: Tensor  # [B, ...]


def split_output(param: Parameterisation, out: Tensor, xt: Tensor) -> tuple[Tensor, Tensor | None]:
    """Split network output into (mean head [B, C, ...], variance head or None)."""
    c = xt.shape[1]
    if out.shape[0] != xt.shape[0] or out.shape[1] != param.out_mult * c:
        raise ConfigError(
            f"network output has shape {tuple(out.shape)} but {param.out_mult}x{c} channels are "
            f"needed for input {tuple(xt.shape)} with variance {param.variance!r}: "
            "rebuild the network for this parameterisation"
        )
    if param.out_mult == 1:
        return out, None
    return out[:, :c], out[:, c:]


def p_log_var(diffusion: Diffusion, t: Tensor, xt: Tensor, var_out: Tensor | None = None) -> Tensor:
    """log sigma_t^2 for each example, broadcast to xt's shape (see module docstring)."""
    s, param = diffusion.schedule, diffusion.param
    if param.variance == "optimal":
        return var_out  # the model's own log sigma_t^2
    log_small = s.at(s.sigma2_small.log(), t, xt)
    if param.variance == "small":
        return log_small.expand_as(xt)
    log_large = s.at(s.sigma2_large.log(), t, xt)
    if param.variance == "large":
        return log_large.expand_as(xt)
    # learned: interpolate between log beta_t and the clipped log beta_tilde_t [ND21] eq. (15);
    # at t = 1 the lower end is the decoder variance beta_tilde_2 (beta_tilde_1 = 0 has no
    # logarithm) and the upper end beta_1, as in [ND21]'s code.
    log_beta = s.at(s.beta.clamp(min=1e-300).log(), t, xt)
    u = (var_out + 1) / 2
    return u * log_beta + (1 - u) * log_small


def p_from_output(
    diffusion: Diffusion,
    out: Tensor,
    xt: Tensor,
    t: Tensor,
    clip: tuple[float, float] | None = None,
    detach_mean: bool = False,
) -> PTheta:
    """p_theta(x_{t-1} | x_t) from the network output ``out`` at (x_t, t).

    clip: clamp x0_hat to this range (data range) before forming the mean.
    detach_mean: stop gradients through the mean (the L_vlb part of L_hybrid, [ND21] Sec. 3.1).
    """
    s, param = diffusion.schedule, diffusion.param
    head, var_out = split_output(param, out, xt)
    if detach_mean:
        head = head.detach()
    if param.prediction == "eps":
        x0_hat = x0_from_eps(s, xt, t, head)
    elif param.prediction == "x0":
        x0_hat = head
    else:
        x0_hat = x0_from_v(s, xt, t, head)
    if clip is not None:
        x0_hat = x0_hat.clamp(*clip)
    exact_eps = param.prediction == "eps" and clip is None
    eps_hat = head if exact_eps else eps_from_x0(s, xt, t, x0_hat)
    mean = s.at(s.posterior_coef_x0, t, xt) * x0_hat + s.at(s.posterior_coef_xt, t, xt) * xt
    log_var = p_log_var(diffusion, t, xt, var_out)
    return PTheta(mean=mean, log_var=log_var, x0_hat=x0_hat, eps_hat=eps_hat)


__all__ = [
    "Denoiser",
    "PTheta",
    "Parameterisation",
    "p_from_output",
    "p_log_var",
    "split_output",
]
