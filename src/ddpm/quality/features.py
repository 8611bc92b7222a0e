"""A feature space trained here: a small classifier of labelled image data (digits, MNIST).

FID and KID need features in which distances mean something. Instead of Inception weights
(a download) we train a small MLP classifier on the training split of the data itself:

    x [C, H, W] -> flatten -> Linear(D, 256) -> ReLU -> Linear(256, 64) -> ReLU = h (64)
    features = c h,  logits = Linear(64, classes)(h)

with the constant c fixed after training so that the training features have mean |f|^2 / 64 = 1:
the cubic kernel of KID, (f.f' / 64 + 1)^3, then sees inputs of order one.

Training is a function of (data, seed, steps): weights are initialised and batches drawn from a
generator seeded with ``seed``, so the same data give the same classifier on the same machine
(float sums may differ in the last bits across thread counts or CPUs). The trained weights are
stored as ``<name>-<key>.safetensors`` with a JSON sidecar (test accuracy, seed, steps, training
time, data digest) in a cache folder, and reused whenever they are present: the key is a digest
of the training and test examples, their labels and the training settings, so other data never
reuse a classifier. The folder is, in order: the ``cache_dir`` argument (``--classifier-dir``),
``$DDPM_CACHE/classifiers``, ``$XDG_CACHE_HOME/ddpm/classifiers``, ``~/.cache/ddpm/classifiers``.
Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ddpm.data.spec import Dataset
from ddpm.errors import CheckpointError, DataError
from ddpm.storage import load_json, load_tensors, save_json, save_tensors

FEATURE_DIM = 64
HIDDEN = 256
CONFIDENT = 0.9  # a sample is confidently classified when its top class probability exceeds this
_VERSION = 2  # bump when the architecture or training changes: old files are then not reused


class FeatureNet(nn.Module):
    """MLP classifier whose penultimate activations are the feature space."""

    def __init__(self, num_dims: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_dims, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.register_buffer("feature_scale", torch.ones((), dtype=torch.float32))

    def features(self, x: Tensor) -> Tensor:
        """[B, *shape] in model space -> [B, FEATURE_DIM]."""
        return self.feature_scale * self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class ClassifierInfo:
    """How a stored classifier was made and how good it is (its JSON sidecar)."""

    data: str
    digest: str
    num_dims: int
    num_classes: int
    seed: int
    steps: int
    batch_size: int
    test_accuracy: float
    train_seconds: float
    version: int = _VERSION


@dataclass(frozen=True, eq=False)
class Classifier:
    """A trained FeatureNet, its info, where it is stored and whether it was trained just now."""

    net: FeatureNet
    info: ClassifierInfo
    path: Path
    trained_now: bool

    @torch.no_grad()
    def features(self, x: Tensor, batch: int = 4096) -> Tensor:
        """Features [n, FEATURE_DIM] of x [n, *shape] (float32, model space)."""
        return torch.cat([self.net.features(x[i : i + batch]) for i in range(0, len(x), batch)])

    @torch.no_grad()
    def probabilities(self, x: Tensor, batch: int = 4096) -> Tensor:
        """Class probabilities [n, classes] of x [n, *shape]."""
        return torch.cat([self.net(x[i : i + batch]).softmax(-1) for i in range(0, len(x), batch)])


def default_cache_dir() -> Path:
    """$DDPM_CACHE/classifiers, else $XDG_CACHE_HOME/ddpm/classifiers, else ~/.cache/..."""
    if os.environ.get("DDPM_CACHE"):
        return Path(os.environ["DDPM_CACHE"]).expanduser() / "classifiers"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ddpm" / "classifiers"


def data_digest(data: Dataset, seed: int, steps: int, batch_size: int) -> str:
    """sha256 of both splits, their labels and the training settings (hex, 16 characters)."""
    h = hashlib.sha256(f"v{_VERSION} seed={seed} steps={steps} batch={batch_size}".encode())
    for t in (data.train, data.train_labels, data.test, data.test_labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _init_(net: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear initialisation, drawn from ``generator`` (no global RNG)."""
    for m in net.modules():
        if isinstance(m, nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            with torch.no_grad():
                for p in (m.weight, m.bias):
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)


def train_classifier(
    data: Dataset, seed: int = 0, steps: int = 600, batch_size: int = 128
) -> tuple[FeatureNet, float, float]:
    """Train a FeatureNet on data.train with Adam; returns (net, test accuracy, seconds)."""
    if not data.labelled:
        raise DataError(f"{data.spec.name}: no labels, so no classifier can be trained")
    start = time.perf_counter()
    num_classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
    net = FeatureNet(data.spec.num_dims, num_classes)
    g = torch.Generator().manual_seed(seed)
    _init_(net, g)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    x, y = data.train, data.train_labels
    order = torch.randperm(len(x), generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > len(x):
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        h = torch.cat([net.body(x[i : i + 4096]) for i in range(0, len(x), 4096)])
        net.feature_scale.fill_(h.pow(2).sum(1).mean().div(FEATURE_DIM).rsqrt().item())
        accuracy = (net(data.test).argmax(-1) == data.test_labels).double().mean().item()
    return net, accuracy, time.perf_counter() - start


def load_or_train_classifier(
    data: Dataset,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    steps: int = 600,
    batch_size: int = 128,
) -> Classifier:
    """The classifier of labelled data: read from the cache folder, or trained and stored there."""
    if not data.labelled:
        raise DataError(
            f"{data.spec.name}: the data has no labels, so there is no trained feature space; "
            "only nearest-neighbour distances are available"
        )
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = data_digest(data, seed, steps, batch_size)
    path = folder / f"{data.spec.name}-{digest}.safetensors"
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        try:
            info = ClassifierInfo(**load_json(info_path))
        except TypeError as e:
            raise CheckpointError(
                f"{info_path}: not a classifier record ({e}); delete it"
            ) from None
        net = FeatureNet(info.num_dims, info.num_classes)
        tensors, _ = load_tensors(path)
        try:
            net.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(
                f"{path}: does not hold this classifier ({str(e).splitlines()[0]}); delete it "
                "to retrain"
            ) from None
        return Classifier(net.eval(), info, path, trained_now=False)
    net, accuracy, seconds = train_classifier(data, seed, steps, batch_size)
    info = ClassifierInfo(
        data=data.spec.name,
        digest=digest,
        num_dims=data.spec.num_dims,
        num_classes=net.head.out_features,
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        test_accuracy=accuracy,
        train_seconds=seconds,
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(path, net.state_dict(), {"info": json.dumps(asdict(info))})
    save_json(info_path, asdict(info))
    return Classifier(net, info, path, trained_now=True)
