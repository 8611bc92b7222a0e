"""Sample quality without downloads: exact scores on known densities, FID/KID in a feature
space trained here, nearest-neighbour distances, and quality against the number of steps."""

from ddpm.quality.density import DensityScores, density_reference, density_scores
from ddpm.quality.fid import frechet_distance, kernel_distance
from ddpm.quality.scores import QualityReport, sample_quality

__all__ = [
    "DensityScores",
    "QualityReport",
    "density_reference",
    "density_scores",
    "frechet_distance",
    "kernel_distance",
    "sample_quality",
]
