"""ddpm: denoising diffusion probabilistic models with exact likelihood tools.

The DDPM of [Ho20]: a fixed forward process q, a learned reverse process p_theta fit by the ELBO,
ancestral sampling; plus the ELBO term by term, bits/dim, importance-weighted bounds and
Bayes-optimal oracles whose answers are known.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239

Importing the package is cheap: each public name below loads its module (and torch) on first
use, so ``import ddpm`` stays fast. ``ddpm.__version__`` is the installed distribution's version
(``ddpm-likelihood``), read on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

_DISTRIBUTION = "ddpm-likelihood"
# the version when neither installed metadata nor the source tree's pyproject.toml gives one
_UNKNOWN_VERSION = "0+unknown"

# module -> the public names it provides
_MODULES: dict[str, tuple[str, ...]] = {
    "ddpm.config": ("DataConfig", "DiffusionConfig", "ModelConfig", "RunConfig", "TrainConfig"),
    "ddpm.data": ("Dataset", "DataSpec", "GaussianMixture", "load_dataset"),
    "ddpm.errors": ("CheckpointError", "ConfigError", "DataError", "DdpmError"),
    "ddpm.foreign.denoising_diffusion_pytorch": ("from_denoising_diffusion_pytorch",),
    "ddpm.foreign.improved_diffusion": ("from_improved_diffusion",),
    "ddpm.foreign.network": ("from_network", "Process"),
    "ddpm.jobs.evaluate": ("evaluate_run", "evaluate_steps_run"),
    "ddpm.jobs.forward": ("forward_strip",),
    "ddpm.jobs.report": ("write_run_report",),
    "ddpm.jobs.sample": ("sample_run",),
    "ddpm.likelihood.bounds": ("iw_curve", "iw_log_likelihood"),
    "ddpm.likelihood.elbo": (
        "bits_per_dim",
        "elbo_mc",
        "elbo_terms",
        "ElboTerms",
        "prior_kl",
        "vb_term",
    ),
    "ddpm.likelihood.evaluate": ("evaluate", "Evaluation"),
    "ddpm.likelihood.joint_kl": ("joint_kl", "JointKl"),
    "ddpm.likelihood.ode": ("ode_likelihood", "OdeConfig", "OdeLikelihood", "ProbabilityFlow"),
    "ddpm.likelihood.oracles": ("gaussian_analysis", "GaussianOracle", "MixtureOracle"),
    "ddpm.likelihood.sweep": ("Sweep", "sweep_gaussian", "sweep_mixture"),
    "ddpm.likelihood.theory": ("bayes_optimal", "theory_gaussian", "theory_mixture", "theory_run"),
    "ddpm.loader": ("load",),
    "ddpm.model": ("Model", "p_mean_var", "Source"),
    "ddpm.nets": ("build_model",),
    "ddpm.process.continuous": ("ContinuousMixtureOracle", "ContinuousSchedule"),
    "ddpm.process.diffusion": ("denoise", "Diffusion", "Parameterisation"),
    "ddpm.process.forward": ("q_marginal", "q_posterior", "q_sample", "q_step"),
    "ddpm.process.respace": ("respace", "respaced_steps", "space_timesteps"),
    "ddpm.process.rng": ("KeyedNoise",),
    "ddpm.process.schedule": ("NoiseSchedule",),
    "ddpm.requests": (
        "EvaluationRequest",
        "QualityRequest",
        "SamplingRequest",
        "TheoryRequest",
        "VaeEvaluationRequest",
    ),
    "ddpm.sampling.ancestral": ("p_sample", "sample"),
    "ddpm.sampling.ddim": ("ddim_sample",),
    "ddpm.training.loop": ("train", "TrainResult"),
    "ddpm.training.losses": ("training_loss",),
    "ddpm.training.presets": ("apply_preset",),
    "ddpm.jobs.vae": ("compare_runs", "evaluate_vae_run"),
    "ddpm.vae.evaluate": ("evaluate_vae",),
    "ddpm.vae.config": ("VaeConfig", "VaeRunConfig"),
    "ddpm.vae.model": ("Vae",),
    "ddpm.vae.train": ("load_vae_run", "train_vae"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name == "__version__":
        value: object = _version()
        globals()[name] = value  # read once
        return value
    module = _EXPORTS.get(name)
    if module is None:  # a submodule not imported yet, as ``ddpm.runs``
        if (
            not name.isidentifier()  # a dotted name such as "ddpm.config" is no attribute
            or name.startswith("_")
            or importlib.util.find_spec(f"{__name__}.{name}") is None
        ):
            raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


def _version() -> str:
    """The version of the installed ``ddpm-likelihood``; from an uninstalled source tree (``src/``
    on the path), the ``version`` of its pyproject.toml; else ``_UNKNOWN_VERSION``."""
    # importlib.metadata costs ~30 ms to import, so it is loaded here and not at ``import ddpm``
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_DISTRIBUTION)
    except PackageNotFoundError:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
        return _source_tree_version(os.path.join(root, "pyproject.toml"))


def _source_tree_version(pyproject: str) -> str:
    """``[project] version`` of ``pyproject`` if it describes this distribution, else
    ``_UNKNOWN_VERSION``."""
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        return _UNKNOWN_VERSION
    try:
        with open(pyproject, "rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return _UNKNOWN_VERSION
    if project.get("name") != _DISTRIBUTION or not isinstance(project.get("version"), str):
        return _UNKNOWN_VERSION
    return project["version"]
