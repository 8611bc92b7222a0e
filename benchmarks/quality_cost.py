"""Cost of each sample-quality metric, timed side by side in one process, alternating.

Each repeat times, in turn: the density reference of gmm8 (1e5 draws of q), the density scores
of n gmm8 points, training the digits classifier (into a temporary folder), the digits
classifier's features of n images, FID, KID (10 subsets) and nearest-neighbour distances of n
digits to the 1500 training images. Prints the median and (min, max) seconds of each as JSON.

    python benchmarks/quality_cost.py [--n 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from ddpm.config import DataConfig
from ddpm.data import load_dataset
from ddpm.quality.density import density_reference, density_scores
from ddpm.quality.features import load_or_train_classifier, train_classifier
from ddpm.quality.fid import frechet_distance, kernel_distance
from ddpm.quality.neighbours import nearest_distances


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    gmm = load_dataset(DataConfig(name="gmm8"))
    digits = load_dataset(DataConfig())
    g = torch.Generator().manual_seed(0)
    x_gmm = gmm.density.sample(args.n, generator=g)
    x_img = digits.train[torch.randint(len(digits.train), (args.n,), generator=g)]
    with tempfile.TemporaryDirectory() as tmp:
        clf = load_or_train_classifier(digits, tmp)
    ref = density_reference(gmm.density, generator=g)
    f_train, f_x = clf.features(digits.train), clf.features(x_img)
    jobs = {
        "density_reference_1e5": lambda: density_reference(gmm.density, generator=g),
        "density_scores": lambda: density_scores(gmm.density, x_gmm, ref),
        "classifier_training": lambda: train_classifier(digits),
        "classifier_features": lambda: clf.features(x_img),
        "fid": lambda: frechet_distance(f_x, f_train),
        "kid_10_subsets": lambda: kernel_distance(f_x, f_train, generator=g),
        "nearest_neighbours": lambda: nearest_distances(x_img, digits.train),
    }
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    result = {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
        for name, t in times.items()
    }
    print(json.dumps({"n": args.n, "repeats": args.repeats, "seconds": result}, indent=2))


if __name__ == "__main__":
    main()
