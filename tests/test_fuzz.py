"""Property-based fuzzing of everything a user hands in: config.json of a run, mixture JSON,
.npy/.npz files, image folders, option values.

The property: ``ddpm`` exits 0 with a valid result, or exits 2 with one line on stderr; never a
traceback (an exception escaping ``main``), and never a changed or deleted file outside the run
folder (the inputs and a bystander folder are compared byte for byte).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from ddpm.cli.main import main

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TRAIN = [
    "--diffusion-steps", "3", "--max-steps", "1", "--batch-size", "2", "--n-train", "8",
    "--n-test", "4", "--hidden", "8", "--depth", "1", "--channels", "4", "--channel-mults", "1",
    "--attn-resolutions", "99", "--num-samples", "2", "--quiet", "--threads", "1",
]  # fmt: skip
# a progress line, not a message: a tqdm bar ("train:  50%|###") or a plain line of
# ddpm.progress ("train: start, 60 step", "gmm8: ELBO: 6/10 t (60%), 3.1t/s, ...")
_BAR = re.compile(r"\d+%\||: start(?: at \S+)?, [\d.]+ \S+$|: [\d.]+/[\d.]+ \S+ \(\d+%\)(?:,| in )")
EXAMPLES: Counter[tuple[str, str]] = Counter()  # (test, "command exit status"): examples


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".ddpm.lock"
    }


def check_cli(args: list, outside: list[Path]) -> tuple[int, str]:
    """Run ddpm in-process; assert the property; return (exit status, stderr)."""
    before = {p: tree(p) if p.is_dir() else p.read_bytes() for p in outside}
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])  # any exception here is a traceback: a failure
    lines = [ln for ln in err.getvalue().replace("\r", "\n").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not _BAR.search(ln)]
    assert code in (0, 2), (args, code, lines)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"ddpm {args[0]}: error: "), (args, lines)
    for p, content in before.items():
        assert (tree(p) if p.is_dir() else p.read_bytes()) == content, f"{p} changed"
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    EXAMPLES[test, f"{args[0]} exit {code}"] += 1
    return code, err.getvalue()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with a tiny trained run and a bystander folder of the user's files."""
    root = tmp_path_factory.mktemp("fuzz")
    bystander = root / "bystander"
    bystander.mkdir()
    (bystander / "notes.txt").write_text("mine")
    run = root / "run"
    assert main(["train", "--out", str(run), "--data", "gmm8", *TRAIN, "--max-steps", "2"]) == 0
    return root


@contextlib.contextmanager
def scratch(base: Path):
    folder = Path(tempfile.mkdtemp(dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


# --- config.json of a run -------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _paths(doc, prefix=()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += _paths(v, (*prefix, k))
    return found


@st.composite
def config_mutations(draw, doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        *parent_keys, key = path
        parent = doc
        for k in parent_keys:
            parent = parent[k]
        kind = draw(st.sampled_from(["delete", "set", "add"]))
        if kind == "delete":
            del parent[key]
        elif kind == "set":
            parent[key] = draw(JSON_VALUES)
        else:
            parent[draw(st.text(min_size=1, max_size=5))] = draw(JSON_VALUES)
    return doc


@FUZZ
@given(data=st.data())
def test_fuzz_config_json_of_a_run(base, data):
    run = base / "run"
    original = json.loads((run / "config.json").read_text())
    doc = data.draw(config_mutations(original))
    with scratch(base) as tmp:
        copy = shutil.copytree(run, tmp / "run")
        text = json.dumps(doc, allow_nan=True)
        (copy / "config.json").write_text(text)
        command = data.draw(st.sampled_from(["sample", "evaluate", "resume"]))
        args = {
            "sample": ["sample", copy, "-n", "2"],
            "evaluate": ["evaluate", copy, "-n", "2", "--max-batch", "64"],
            "resume": ["train", "--out", copy, "--resume", "--max-steps", "3", "--quiet"],
        }[command]
        code, _ = check_cli(args, [base / "bystander", run])
        if code == 0 and command == "sample":
            assert np.load(copy / "samples_seed0.npy").shape == (2, 2)


# --- mixture JSON ---------------------------------------------------------------------------

FLOATS = st.floats(-5, 5) | st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e300])


@st.composite
def mixtures(draw) -> object:
    k, d = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    if draw(st.booleans()):
        k2, d2 = draw(st.integers(0, 3)), draw(st.integers(0, 3))  # mismatched shapes
    else:
        k2, d2 = k, d
    doc = {
        "weights": draw(st.lists(FLOATS, min_size=k, max_size=k)),
        "means": [draw(st.lists(FLOATS, min_size=d, max_size=d)) for _ in range(k2)],
    }
    if draw(st.booleans()):
        doc["stds"] = draw(st.lists(FLOATS, min_size=k2, max_size=k2))
    else:
        doc["covariances"] = [
            [draw(st.lists(FLOATS, min_size=d2, max_size=d2)) for _ in range(d2)] for _ in range(k2)
        ]
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = draw(JSON_VALUES)
    if draw(st.integers(0, 9)) == 0:  # not an object at all
        return draw(st.sampled_from([doc["weights"], "text", None, 3]))
    return doc


@FUZZ
@given(doc=mixtures(), command=st.sampled_from(["train", "theory"]))
def test_fuzz_mixture_json(base, doc, command):
    with scratch(base) as tmp:
        spec = tmp / "mix.json"
        spec.write_text(json.dumps(doc, allow_nan=True))
        if command == "train":
            args = ["train", "--data", spec, "--out", tmp / "run", *TRAIN]
        else:
            args = ["theory", spec, "--diffusion-steps", "3", "-n", "4", "--iw", "1"]
            args += ["--out", tmp / "rep"]
        check_cli(args, [base / "bystander", spec])


# --- .npy / .npz files ----------------------------------------------------------------------

DTYPES = st.sampled_from(["float32", "float64", "int64", "uint8", "int8", "bool", "complex64"])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(DTYPES))
    shape = draw(SHAPES)
    if dtype.kind == "f":
        elements = st.floats(-1e6, 1e6, width=32) | st.sampled_from([np.nan, np.inf, 0.0])
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@FUZZ
@given(
    kind=st.sampled_from(["npy", "npz", "garbage.npy", "garbage.npz", "npz-keys"]),
    data=st.data(),
)
def test_fuzz_array_files(base, kind, data):
    with scratch(base) as tmp:
        if kind.startswith("garbage"):
            path = tmp / ("x." + kind.split(".")[1])
            path.write_bytes(data.draw(st.binary(max_size=200)))
        elif kind == "npy":
            path = tmp / "x.npy"
            np.save(path, data.draw(arrays()))
        else:
            path = tmp / "x.npz"
            keys = ["train", "test"] if kind == "npz" else data.draw(
                st.lists(st.sampled_from(["train", "test", "x", "y", "arr_0"]), unique=True)
            )  # fmt: skip
            np.savez(path, **{k: data.draw(arrays()) for k in keys})
        args = ["train", "--data", path, "--out", tmp / "run", *TRAIN]
        code, _ = check_cli(args, [base / "bystander", path])
        if code == 0:
            assert (tmp / "run" / "checkpoint.safetensors").exists()


# --- image folders --------------------------------------------------------------------------


@st.composite
def image_folder(draw, folder: Path) -> Path:
    folder.mkdir()
    for i in range(draw(st.integers(0, 4))):
        name = f"im{i}." + draw(st.sampled_from(["png", "jpg", "PNG", "txt"]))
        if draw(st.integers(0, 4)) == 0:
            (folder / name).write_bytes(draw(st.binary(max_size=64)))
            continue
        mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16"]))
        w, h = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        fmt = "JPEG" if name.lower().endswith("jpg") and mode in ("L", "RGB") else "PNG"
        Image.new(mode, (w, h)).save(folder / name, format=fmt)
    if draw(st.booleans()):
        (folder / "sub").mkdir()
    return folder


@FUZZ
@given(data=st.data())
def test_fuzz_image_folders(base, data):
    with scratch(base) as tmp:
        folder = data.draw(image_folder(tmp / "images"))
        extra = []
        if data.draw(st.booleans()):
            extra += ["--image-size", str(data.draw(st.integers(-1, 9)))]
        if data.draw(st.booleans()):
            extra += ["--grayscale"]
        args = ["train", "--data", folder, "--out", tmp / "run", *TRAIN, *extra]
        check_cli(args, [base / "bystander", folder])


# --- option values --------------------------------------------------------------------------

# mostly valid values, so that the valid path (exit 0 with a result) is fuzzed as well
VALUES = st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.integers(-3, 0))


@FUZZ
@given(command=st.sampled_from(["sample", "evaluate", "train", "forward"]), data=st.data())
def test_fuzz_option_values(base, command, data):
    run = base / "run"
    with scratch(base) as tmp:
        if command == "sample":
            args = ["sample", run, "--out", tmp / "s.png"]
            for flag in ("--num-samples", "--seed", "--frames", "--threads"):
                if data.draw(st.booleans()):
                    args += [flag, data.draw(VALUES)]
            if data.draw(st.booleans()):
                args += ["--trajectory"]
        elif command == "evaluate":
            args = ["evaluate", run, "--out", tmp / "e"]
            for flag in ("--num-examples", "--seed", "--max-batch", "--mc", "--threads"):
                if data.draw(st.booleans()):
                    args += [flag, data.draw(VALUES)]
            if data.draw(st.booleans()):
                args += ["--iw", *data.draw(st.lists(st.integers(-2, 4), max_size=3))]
            if data.draw(st.booleans()):
                args += ["--split", data.draw(st.sampled_from(["test", "train", "valid", ""]))]
        elif command == "train":
            args = ["train", "--data", "gmm8", "--out", tmp / "run", *TRAIN]
            flags = ("--diffusion-steps", "--max-steps", "--batch-size", "--warmup", "--log-every")
            for flag in (*flags, "--seed"):
                if data.draw(st.booleans()):
                    args += [flag, data.draw(VALUES)]
            for flag in ("--lr", "--ema-decay", "--grad-clip", "--dropout", "--test-fraction"):
                if data.draw(st.booleans()):
                    value = data.draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1e9]) | FLOATS)
                    args += [f"{flag}={value!r}"]  # "--lr -1e-5" would read as a flag
        else:
            image = tmp / "a.png"
            Image.new("RGB", (6, 6)).save(image)
            args = ["forward", image, "--out", tmp / "f.png"]
            for flag in ("--diffusion-steps", "--frames", "--image-size", "--seed"):
                if data.draw(st.booleans()):
                    args += [flag, data.draw(st.integers(-3, 12))]
            if data.draw(st.booleans()):
                args += ["--schedule", data.draw(st.sampled_from(["linear", "cosine", "quad"]))]
        check_cli(args, [base / "bystander", run])


def test_fuzz_examples_were_run(request):
    """Each fuzz test of this session checked examples, and the option values reached every
    command; the counts are printed (shown with -s). Runs after the tests above."""
    fuzz = [
        item.name
        for item in request.session.items
        if item.module is request.module and item.name.startswith("test_fuzz_")
    ]
    fuzz.remove(request.node.name)
    if not fuzz:
        pytest.skip("no fuzz test ran in this session")
    by_test = Counter()
    for (test, _), n in EXAMPLES.items():
        by_test[test] += n
    print(f"\n{sum(EXAMPLES.values())} fuzz examples checked: {dict(sorted(EXAMPLES.items()))}")
    assert [t for t in fuzz if by_test[t] == 0] == [], dict(by_test)
    if "test_fuzz_option_values" in fuzz:
        ran = {key.split()[0] for test, key in EXAMPLES if test == "test_fuzz_option_values"}
        assert ran == {"sample", "evaluate", "train", "forward"}
