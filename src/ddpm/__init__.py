"""ddpm: denoising diffusion probabilistic models with exact likelihood tools.

The DDPM of [Ho20]: a fixed forward process q, a learned reverse process p_theta fit by the ELBO,
ancestral sampling; plus the ELBO term by term, bits/dim, importance-weighted bounds and
Bayes-optimal oracles whose answers are known.

References:
    [Ho20] Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239
"""

__version__ = "0.1.0"

from ddpm.api import evaluate_run, evaluate_steps_run, forward_strip, sample_run  # noqa: E402
from ddpm.bounds import iw_curve, iw_log_likelihood  # noqa: E402
from ddpm.config import (  # noqa: E402
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from ddpm.continuous import ContinuousMixtureOracle, ContinuousSchedule  # noqa: E402
from ddpm.data import Dataset, DataSpec, GaussianMixture, load_dataset  # noqa: E402
from ddpm.ddim import ddim_sample  # noqa: E402
from ddpm.diffusion import Diffusion, denoise  # noqa: E402
from ddpm.elbo import ElboTerms, bits_per_dim, elbo_mc, elbo_terms, prior_kl, vb_term  # noqa: E402
from ddpm.errors import CheckpointError, ConfigError, DataError, DdpmError  # noqa: E402
from ddpm.evaluate import Evaluation, evaluate  # noqa: E402
from ddpm.forward import q_marginal, q_posterior, q_sample, q_step  # noqa: E402
from ddpm.joint_kl import JointKl, joint_kl  # noqa: E402
from ddpm.losses import training_loss  # noqa: E402
from ddpm.models import LoadedModel, load_model  # noqa: E402
from ddpm.nets import build_model  # noqa: E402
from ddpm.ode import OdeConfig, OdeLikelihood, ProbabilityFlow, ode_likelihood  # noqa: E402
from ddpm.oracles import GaussianOracle, MixtureOracle, gaussian_analysis  # noqa: E402
from ddpm.presets import apply_preset  # noqa: E402
from ddpm.respace import respace, space_timesteps  # noqa: E402
from ddpm.reverse import Parameterisation, p_mean_var  # noqa: E402
from ddpm.rng import KeyedNoise  # noqa: E402
from ddpm.runs import Run, load_run  # noqa: E402
from ddpm.sampling import p_sample, sample  # noqa: E402
from ddpm.schedule import NoiseSchedule  # noqa: E402
from ddpm.sweep import Sweep, sweep_gaussian, sweep_mixture  # noqa: E402
from ddpm.theory import theory_gaussian, theory_mixture, theory_run  # noqa: E402
from ddpm.train import TrainResult, train  # noqa: E402
from ddpm.vae import Vae, VaeConfig, VaeRunConfig  # noqa: E402
from ddpm.vae_eval import compare_runs, evaluate_vae  # noqa: E402
from ddpm.vae_train import load_vae_run, train_vae  # noqa: E402

__all__ = [
    "apply_preset",
    "JointKl",
    "Sweep",
    "joint_kl",
    "sweep_gaussian",
    "sweep_mixture",
    "CheckpointError",
    "ConfigError",
    "ContinuousMixtureOracle",
    "ContinuousSchedule",
    "DataConfig",
    "DataError",
    "DataSpec",
    "Dataset",
    "DdpmError",
    "Diffusion",
    "DiffusionConfig",
    "ElboTerms",
    "Evaluation",
    "GaussianMixture",
    "GaussianOracle",
    "KeyedNoise",
    "LoadedModel",
    "MixtureOracle",
    "ModelConfig",
    "NoiseSchedule",
    "OdeConfig",
    "OdeLikelihood",
    "Parameterisation",
    "ProbabilityFlow",
    "Run",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "Vae",
    "VaeConfig",
    "VaeRunConfig",
    "bits_per_dim",
    "compare_runs",
    "build_model",
    "ddim_sample",
    "denoise",
    "elbo_mc",
    "elbo_terms",
    "evaluate",
    "evaluate_vae",
    "evaluate_run",
    "evaluate_steps_run",
    "forward_strip",
    "gaussian_analysis",
    "iw_curve",
    "iw_log_likelihood",
    "load_model",
    "load_dataset",
    "load_run",
    "ode_likelihood",
    "load_vae_run",
    "p_mean_var",
    "p_sample",
    "prior_kl",
    "q_marginal",
    "q_posterior",
    "q_sample",
    "q_step",
    "respace",
    "sample",
    "sample_run",
    "space_timesteps",
    "theory_gaussian",
    "theory_mixture",
    "theory_run",
    "train",
    "train_vae",
    "training_loss",
    "vb_term",
]
