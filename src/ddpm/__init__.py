"""ddpm: denoising diffusion probabilistic models with exact likelihood tools.

The DDPM of [Ho20]: a fixed forward process q, a learned reverse process p_theta fit by the ELBO,
ancestral sampling; plus the ELBO term by term, bits/dim, importance-weighted bounds and
Bayes-optimal oracles whose answers are known.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239

Importing the package is cheap: each public name below loads its module (and torch) on first
use, so ``import ddpm`` stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

# module -> the public names it provides
_MODULES: dict[str, tuple[str, ...]] = {
    "ddpm.api": ("evaluate_run", "evaluate_steps_run", "forward_strip", "sample_run"),
    "ddpm.bounds": ("iw_curve", "iw_log_likelihood"),
    "ddpm.config": ("DataConfig", "DiffusionConfig", "ModelConfig", "RunConfig", "TrainConfig"),
    "ddpm.continuous": ("ContinuousMixtureOracle", "ContinuousSchedule"),
    "ddpm.data": ("Dataset", "DataSpec", "GaussianMixture", "load_dataset"),
    "ddpm.ddim": ("ddim_sample",),
    "ddpm.diffusion": ("denoise", "Diffusion"),
    "ddpm.elbo": ("bits_per_dim", "elbo_mc", "elbo_terms", "ElboTerms", "prior_kl", "vb_term"),
    "ddpm.errors": ("CheckpointError", "ConfigError", "DataError", "DdpmError"),
    "ddpm.evaluate": ("evaluate", "Evaluation"),
    "ddpm.forward": ("q_marginal", "q_posterior", "q_sample", "q_step"),
    "ddpm.joint_kl": ("joint_kl", "JointKl"),
    "ddpm.losses": ("training_loss",),
    "ddpm.models": ("load_model", "LoadedModel"),
    "ddpm.nets": ("build_model",),
    "ddpm.ode": ("ode_likelihood", "OdeConfig", "OdeLikelihood", "ProbabilityFlow"),
    "ddpm.oracles": ("gaussian_analysis", "GaussianOracle", "MixtureOracle"),
    "ddpm.presets": ("apply_preset",),
    "ddpm.respace": ("respace", "respaced_steps", "space_timesteps"),
    "ddpm.reverse": ("p_mean_var", "Parameterisation"),
    "ddpm.rng": ("KeyedNoise",),
    "ddpm.runs": ("load_run", "Run"),
    "ddpm.sampling": ("p_sample", "sample"),
    "ddpm.schedule": ("NoiseSchedule",),
    "ddpm.sweep": ("Sweep", "sweep_gaussian", "sweep_mixture"),
    "ddpm.theory": ("theory_gaussian", "theory_mixture", "theory_run"),
    "ddpm.train": ("train", "TrainResult"),
    "ddpm.vae": ("Vae", "VaeConfig", "VaeRunConfig"),
    "ddpm.vae_eval": ("compare_runs", "evaluate_vae"),
    "ddpm.vae_train": ("load_vae_run", "train_vae"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:  # a submodule not imported yet, as ``ddpm.runs``
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package object: a public name that is also a submodule's name (``ddpm.train`` the
    function, ``ddpm/train.py`` the module) keeps meaning the public object after the submodule
    is imported, as it did when this file imported everything eagerly."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            return  # the import system binding the submodule over the public name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
