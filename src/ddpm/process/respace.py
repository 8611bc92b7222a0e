"""Respacing: a K-step process on a subsequence of the T steps, [ND21] Sec. 4.

Given steps 1 <= tau_1 < ... < tau_K <= T of a process with cumulative products alpha_bar_t, the
respaced process keeps the marginals q(x_{tau_k} | x_0) and is a DDPM in its own right:

    alpha_bar'_k = alpha_bar_{tau_k},   alpha_bar'_0 = alpha_bar_{tau_0} = 1,
    beta'_k = 1 - alpha_bar_{tau_k} / alpha_bar_{tau_{k-1}}                       [ND21] Sec. 4
            = -expm1(sum_{t = tau_{k-1}+1 .. tau_k} log(1 - beta_t))   (no cancellation)

with its own posterior variance beta_tilde'_k and the same decoder-variance convention at its
first step as every ``NoiseSchedule`` (``sigma2_small``). The network is still called with the
original step tau_k, so the respaced value's time map is the original one evaluated at tau_k
(composed with an existing time map: respacing a foreign model's process works too). With the
variance 'learned', the interpolation between beta'_k and beta_tilde'_k follows from the new
schedule, as in [ND21]'s code.

Which steps (``respaced_steps``): each spelling gives the step set of the project it comes from.
Those projects number their steps 0..T-1 where our t runs 1..T, so their index i is our step
t = i + 1 (improved-diffusion's alphas_cumprod[i] is our alpha_bar[i + 1]).

- "K" or "10,15,20" (section counts): improved-diffusion's ``space_timesteps(T, "...")``. The T
  indices are cut into len(counts) sections of T // len(counts) (the first T % len(counts) one
  longer); section j keeps counts[j] indices evenly spaced over it, both ends included, its
  stride (size - 1) / (count - 1) accumulated in floating point and rounded with Python's
  ``round`` (halves to even). One count K is one section: round(k (T - 1) / (K - 1)).
- "ddimK": improved-diffusion's ``space_timesteps(T, "ddimK")``: indices 0, s, 2s, ... for the
  smallest integer stride s in 1..T-1 that gives exactly K of them ([SME21]'s uniform skip).
- One count K with a spacing, diffusers' ``timestep_spacing`` of DDIMScheduler/DDPMScheduler
  with steps_offset = 0 ([LLZ23] Table 2 names them): 'linspace' rounds np.linspace(0, T - 1, K)
  (the same set as one section, except where some k (T - 1) / (K - 1) is exactly a half-integer:
  the two floating-point computations can land on either side of the half); 'leading' takes
  0, r, ..., (K - 1) r with r = T // K (so it can stop short of T); 'trailing' rounds
  np.arange(T, 0, -T / K) and subtracts 1 (so it always ends at T).

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
    [ND21] Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672
    [SME21] Song, Meng, Ermon. Denoising Diffusion Implicit Models. arXiv:2010.02502
    [LLZ23] Lin, Liu, Li, Yang. Common Diffusion Noise Schedules and Sample Steps are Flawed.
        arXiv:2305.08891
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from ddpm.errors import ConfigError, require_choice
from ddpm.process.diffusion import Diffusion, identity_time_map
from ddpm.process.schedule import NoiseSchedule

Spacing = Literal["linspace", "leading", "trailing"]
SPACINGS: tuple[str, ...] = get_args(Spacing)
SPELLINGS = "a count K ('50'), section counts ('10,15,20') or 'ddimK' ('ddim50')"


def _require_count(name: str, v: object) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"{name} must be an integer >= 1 (got {v!r})")


def _require_fits(T: int, K: int) -> None:
    if K > T:
        raise ConfigError(f"cannot respace {T} steps into {K}: choose K between 1 and {T}")


def space_timesteps(T: int, sections: int | Sequence[int]) -> list[int]:
    """The steps tau_1 < ... < tau_K (1-based, in 1..T) of improved-diffusion's
    ``space_timesteps(T, sections)``: an int K is one section [K], 0-based indices
    round(k (T - 1) / (K - 1)), k = 0..K-1, the stride summed step by step as there, each index
    i returned as our step i + 1; K = 1 keeps step 1 only (its index 0). Several counts cut the
    T steps into sections first (module docstring); a count of 0 skips its section."""
    _require_count("T", T)
    if isinstance(sections, int):
        _require_count("K", sections)
        _require_fits(T, sections)
        counts = [sections]
    else:
        counts = list(sections)
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in counts):
            raise ConfigError(f"section counts must be integers >= 0 (got {counts})")
        if sum(counts) == 0:
            raise ConfigError(f"section counts {counts} keep no step: give a count >= 1")
    size_per, extra = divmod(T, len(counts))
    steps, start = [], 0
    for j, count in enumerate(counts):
        size = size_per + (1 if j < extra else 0)
        if size < count:
            raise ConfigError(
                f"cannot respace section {j + 1} of {len(counts)} ({size} of the {T} steps) "
                f"into {count}: give it at most {size}"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        idx = 0.0
        for _ in range(count):
            steps.append(start + round(idx) + 1)  # 0-based index -> our 1-based step
            idx += stride
        start += size
    return sorted(set(steps))


def ddim_timesteps(T: int, K: int) -> list[int]:
    """The steps of improved-diffusion's ``space_timesteps(T, "ddimK")``: 0-based indices
    range(0, T, s) for the smallest integer stride s in 1..T-1 that gives exactly K of them,
    returned as our steps i + 1. Refused where no such stride exists (improved-diffusion raises
    there too), naming the nearest counts that have one."""
    _require_count("T", T)
    _require_count("K", K)
    for stride in range(1, T):
        if len(range(0, T, stride)) == K:
            return [i + 1 for i in range(0, T, stride)]
    counts = sorted({len(range(0, T, s)) for s in range(1, T)})
    below = [c for c in counts if c < K][-1:]
    above = [c for c in counts if c > K][:1]
    near = ", ".join(f"ddim{c}" for c in below + above) or "none (T = 1)"
    raise ConfigError(
        f"ddim{K}: no integer stride takes exactly {K} of {T} steps; nearest that do: {near}"
    )


def diffusers_timesteps(T: int, K: int, spacing: Spacing) -> list[int]:
    """The steps of diffusers' ``set_timesteps(K)`` with ``timestep_spacing=spacing`` and
    num_train_timesteps = T, steps_offset = 0 (module docstring), each 0-based timestep i
    returned as our step i + 1, in increasing order. Refused where diffusers' 'trailing' yields
    K + 1 timesteps, the last -1 (its float arange overshoots): no step set of K steps."""
    _require_count("T", T)
    _require_count("K", K)
    require_choice("spacing", spacing, SPACINGS)
    _require_fits(T, K)
    if spacing == "linspace":
        idx = np.linspace(0, T - 1, K).round().astype(np.int64)
    elif spacing == "leading":
        idx = (np.arange(0, K) * (T // K)).round().astype(np.int64)
    else:
        idx = np.round(np.arange(T, 0, -T / K)).astype(np.int64) - 1
    if len(idx) != K or idx.min() < 0:
        raise ConfigError(
            f"spacing {spacing!r} gives {len(idx)} timesteps for K = {K} of {T}, one of them -1 "
            "(diffusers' float arange overshoots): choose another K or spacing"
        )
    return sorted(int(i) + 1 for i in idx)


def parse_steps(steps: int | str, spacing: Spacing | None = None) -> tuple[str, int | list[int]]:
    """A spelling, checked with its spacing: ('count', K) for K or "K", ('sections', counts)
    for "10,15,20", ('ddim', K) for "ddimK". A spacing applies to one count K only."""
    if spacing is not None:
        require_choice("spacing", spacing, SPACINGS)
    text = steps.strip() if isinstance(steps, str) else None
    if isinstance(steps, int) and not isinstance(steps, bool):
        parsed: tuple[str, int | list[int]] = ("count", steps)
    elif text is not None and re.fullmatch(r"[0-9]+(,[0-9]+)*", text):
        counts = [int(c) for c in text.split(",")]
        parsed = ("count", counts[0]) if len(counts) == 1 else ("sections", counts)
    elif text is not None and (m := re.fullmatch(r"ddim([0-9]+)", text)):
        parsed = ("ddim", int(m.group(1)))
    else:
        raise ConfigError(f"steps {steps!r}: give {SPELLINGS}", params=("steps",))
    if spacing is not None and parsed[0] != "count":
        raise ConfigError(
            f"spacing {spacing!r} applies to one count K, not to {steps!r}: drop the spacing "
            "or give one count",
            params=("spacing",),
        )
    return parsed


def respaced_steps(T: int, steps: int | str, spacing: Spacing | None = None) -> list[int]:
    """The steps tau_1 < ... < tau_K (1-based, in 1..T) that a spelling keeps, each exactly as
    in its home project (module docstring): steps is a count K (int or "K"), section counts
    "10,15,20" or "ddimK" (improved-diffusion's); spacing 'linspace', 'leading' or 'trailing'
    (diffusers') applies to one count K. Without a spacing, one count K is improved-diffusion's
    single section."""
    kind, value = parse_steps(steps, spacing)
    if kind == "ddim":
        return ddim_timesteps(T, value)
    if spacing is None:
        return space_timesteps(T, value)
    return diffusers_timesteps(T, value, spacing)


def steps_by_K(
    T: int, steps: Sequence[int | str], spacing: Spacing | None = None
) -> dict[int, tuple[str, list[int]]]:
    """K -> (spelling, steps tau) for several spellings, as a report indexed by K keeps them;
    two spellings of one K must keep the same steps (the first spelling is kept)."""
    chosen: dict[int, tuple[str, list[int]]] = {}
    for spelling in (str(k).strip() for k in steps):
        tau = respaced_steps(T, spelling, spacing)
        first, kept = chosen.setdefault(len(tau), (spelling, tau))
        if kept != tau:
            raise ConfigError(
                f"steps {first!r} and {spelling!r} both give K = {len(tau)} but keep different "
                "timesteps; a report indexed by K takes one of them",
                params=("steps",),
            )
    return chosen


def steps_label(steps: int | str, spacing: Spacing | None = None) -> str:
    """A spelling and spacing as a file-name part: 50, 10-15-20, ddim50, 50_trailing."""
    label = str(steps).strip().replace(",", "-")
    return label if spacing is None else f"{label}_{spacing}"


def respaced_schedule(schedule: NoiseSchedule, tau: list[int]) -> NoiseSchedule:
    """The schedule of the process on steps tau (1-based, increasing): beta'_k as in the
    module docstring, float64, so that alpha_bar'_k = alpha_bar_{tau_k}."""
    log_alpha_bar = torch.cumsum(torch.log1p(-schedule.beta), dim=0)  # [T+1], entry 0 = 0
    idx = torch.tensor([0, *tau], dtype=torch.long)
    log_alpha = log_alpha_bar[idx[1:]] - log_alpha_bar[idx[:-1]]  # log(ab_tau_k / ab_tau_{k-1})
    beta = -torch.expm1(log_alpha)
    return NoiseSchedule(torch.cat([torch.zeros(1, dtype=torch.float64), beta]))


def respace(diffusion: Diffusion, steps: int | str, spacing: Spacing | None = None) -> Diffusion:
    """The K-step process of [ND21] Sec. 4 on the steps ``respaced_steps(T, steps, spacing)``:
    same parameterisation, respaced schedule, and time map k -> the original network time at
    tau_k. ``respace(d, d.T)`` is d itself (same betas, identity time map)."""
    tau = respaced_steps(diffusion.T, steps, spacing)
    original = diffusion.time_map
    if original is None:
        original = identity_time_map(diffusion.T)
    time_map = original[torch.tensor([0, *tau], dtype=torch.long, device=original.device)]
    return Diffusion(respaced_schedule(diffusion.schedule, tau), diffusion.param, time_map)
