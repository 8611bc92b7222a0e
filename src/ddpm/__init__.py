"""ddpm: denoising diffusion probabilistic models with exact likelihood tools."""

__version__ = "0.1.0"
