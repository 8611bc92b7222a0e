"""The split 'all': every example of a data source in its natural order, nothing held out, so
that per-example results pair line by line with other tools' outputs. Image folders come in
sorted path order (not creation order), array files in row order, built-in data train then
test; the train and test splits are what they were."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from ddpm.config import DataConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.requests import EvaluationRequest, VaeEvaluationRequest

# created in this (shuffled) order; read back sorted by path, component by component
CREATED = ["b.png", "c2.png", "a.png", "c10.png", "a/z.png", "B.png"]
SORTED = ["B.png", "a/z.png", "a.png", "b.png", "c10.png", "c2.png"]


def load(name, **kwargs):
    return load_dataset(DataConfig(name=str(name), **kwargs))


def model(v):
    """8-bit value v -> 2 v / 255 - 1 as float32."""
    return torch.from_numpy((np.asarray(v, dtype=np.float64) - 127.5) / 127.5).float()


def read_png(path):
    """One image as uint8 [3, H, W], read with PIL alone."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "pngs"
    for name in CREATED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / name)
    return root


def test_all_of_an_image_folder_is_every_file_in_sorted_path_order(folder):
    data = load(folder)
    expected = np.stack([read_png(folder / name) for name in SORTED])
    assert len(data.all_examples) == len(CREATED)
    assert torch.equal(data.all_examples[:], model(expected))
    # the held-out split is as before: the last of a seed-0 permutation of the sorted files
    perm = np.random.default_rng(0).permutation(len(SORTED))
    assert torch.equal(data.train_examples[:], model(expected[perm[:-1]]))
    assert torch.equal(data.test_examples[:], model(expected[perm[-1:]]))
    assert data.all_labels is None


def test_all_of_an_npy_file_is_its_rows_without_a_copy(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = load(tmp_path / "x.npy")
    assert data.all_examples.memory_mapped
    assert data.all_examples.values is data.train_examples.values  # the one memory map
    assert torch.equal(data.all_examples[:], model(x))
    f = np.random.default_rng(2).normal(size=(20, 3))
    np.save(tmp_path / "f.npy", f)
    cont = load(tmp_path / "f.npy")
    expected = (f - f[cont_train_rows(20)].mean()) / f[cont_train_rows(20)].std()
    assert torch.equal(cont.all_examples[:], torch.from_numpy(expected).float())


def cont_train_rows(n):
    return np.random.default_rng(0).permutation(n)[: n - 2]  # 0.1 n = 2 held out


def test_all_of_built_in_data_is_train_then_test():
    digits = load("digits")
    assert len(digits.all_examples) == 1797
    assert torch.equal(digits.all_examples[:], torch.cat([digits.train, digits.test]))
    assert torch.equal(digits.all_labels, torch.cat([digits.train_labels, digits.test_labels]))
    toy = load("gmm8", n_train=30, n_test=10)
    assert torch.equal(toy.all_examples[:], torch.cat([toy.train, toy.test]))


def test_requests_take_all():
    for cls in (EvaluationRequest, VaeEvaluationRequest):
        r = cls(split="all")
        assert cls.from_dict(r.to_dict()) == r


def test_evaluate_split_all_pairs_per_example_values_with_sorted_files(folder, tmp_path):
    from ddpm.likelihood.evaluate import evaluate
    from ddpm.loader import load as load_model
    from ddpm.process.rng import KeyedNoise
    from ddpm.training.loop import Trainer

    run = tmp_path / "run"
    assert run_cli(
        "train", "--data", folder, "--out", run, "--diffusion-steps", "4", "--max-steps", "2",
        "--batch-size", "2", "--channels", "8", "--num-samples", "2", "--quiet", "--threads", "1",
    ) == 0  # fmt: skip
    pe = tmp_path / "all.npy"
    assert run_cli("evaluate", run, "--data", folder, "--split", "all", "--per-example", pe) == 0
    doc = json.loads((run / "eval_all.json").read_text())
    assert doc["n"] == len(CREATED) and doc["request"]["split"] == "all"
    values = np.load(pe)
    assert values.shape == (len(CREATED),)
    # the same evaluation on the files read one by one in sorted order: equal values; in
    # creation order (the order a careless reader might list them in): different ones
    m = load_model(run)
    for names, same in ((SORTED, True), (CREATED, False)):
        x0 = model(np.stack([read_png(folder / n) for n in names]))
        ev = evaluate(m, x0, EvaluationRequest(), generator=KeyedNoise(0, torch.arange(len(x0))))
        assert np.allclose(ev.per_example.numpy(), values, rtol=1e-12, atol=0) == same
    # training never sees 'all': it trains on the training split
    data = load(folder)
    trainer = Trainer(RunConfig(train=TrainConfig(batch_size=2)), data, torch.device("cpu"))
    assert len(trainer.train_x) == len(data.train_examples) == len(CREATED) - 1
