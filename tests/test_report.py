"""Figures and HTML report: exact grid geometry and pixels, valid PNGs, no pyplot."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.errors import DataError
from ddpm.report import (
    chains,
    default_scale,
    html_table,
    image_grid,
    save_bar_chain,
    save_forward_strip,
    save_image_grid,
    save_per_timestep,
    save_scatter_2d,
    save_trajectory,
    save_trajectory_2d,
    to_uint8,
    write_html,
)


def _read_png(path: Path) -> Image.Image:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return image


# --- pixels and grids ------------------------------------------------------------------------


def test_to_uint8_is_the_inverse_of_the_data_scaling():
    k = torch.arange(256, dtype=torch.float64)
    x = (k / 127.5 - 1.0).view(1, 1, 16, 16)  # {0..255} -> [-1, 1], [Ho20] sec. 3.3
    assert np.array_equal(to_uint8(x).ravel(), np.arange(256, dtype=np.uint8))


def test_to_uint8_endpoints_clamp_and_nan():
    x = torch.tensor([-1.0, 1.0, 0.0, -3.0, 2.0, float("nan"), float("inf")]).view(1, 1, 1, 7)
    assert to_uint8(x).ravel().tolist() == [0, 255, 128, 0, 255, 128, 255]


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "kwargs", "size", "mode"),
    [
        (5, 1, 8, 8, {}, (3 * (8 * 8 + 1) + 1, 2 * (8 * 8 + 1) + 1), "L"),  # nrow 3, scale 8
        (5, 1, 8, 8, {"nrow": 2, "scale": 2, "pad": 3}, (2 * 19 + 3, 3 * 19 + 3), "L"),
        (4, 3, 28, 20, {}, (2 * (20 * 3 + 1) + 1, 2 * (28 * 3 + 1) + 1), "RGB"),  # scale 3
        (3, 1, 4, 4, {"nrow": 10, "scale": 1, "pad": 0}, (12, 4), "L"),  # nrow capped at N
        (1, 3, 64, 64, {}, (66, 66), "RGB"),
    ],
)
def test_grid_geometry(n, c, h, w, kwargs, size, mode):
    image = image_grid(torch.zeros(n, c, h, w), **kwargs)
    assert image.size == size  # (width, height)
    assert image.mode == mode


def test_default_scale_reaches_64_pixels():
    assert [default_scale(s, s) for s in (8, 28, 32, 64, 100)] == [8, 3, 2, 1, 1]
    assert default_scale(28, 20) == 3


def test_grid_pixels_exact():
    x = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 1.0, 0.0, 5.0, -5.0)])
    x[2, 0, 1, 2] = 1.0  # one white pixel in image 2
    scale, pad = 2, 1
    grid = np.asarray(image_grid(x, nrow=3, scale=scale, pad=pad))  # [H, W]
    ch, cw = 2 * scale, 3 * scale
    expected = np.full((2 * (ch + pad) + pad, 3 * (cw + pad) + pad), 128, np.uint8)
    for i, v in enumerate([0, 255, 128, 255, 0]):
        top, left = pad + (i // 3) * (ch + pad), pad + (i % 3) * (cw + pad)
        expected[top : top + ch, left : left + cw] = v
    top, left = pad, pad + 2 * (cw + pad)  # image 2, pixel (1, 2) upscaled to a 2x2 block
    expected[top + 2 : top + 4, left + 4 : left + 6] = 255
    assert np.array_equal(grid, expected)


def test_grid_rgb_channels_and_nearest_upscaling():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 5, 7, generator=g) * 2 - 1
    x[0, :, 0, 0] = torch.tensor([1.0, -1.0, -1.0])  # a red pixel
    grid = np.asarray(image_grid(x, scale=4, pad=2))  # [H, W, 3]
    cell = grid[2:-2, 2:-2]
    assert np.array_equal(cell, np.kron(to_uint8(x)[0], np.ones((4, 4, 1), np.uint8)))
    assert cell[0, 0].tolist() == [255, 0, 0]
    assert (grid[:2] == 128).all() and (grid[:, -2:] == 128).all()


def test_grid_bad_input():
    with pytest.raises(DataError, match=r"C = 1 or 3, got \[2, 2, 8, 8\]"):
        image_grid(torch.zeros(2, 2, 8, 8))
    with pytest.raises(DataError, match="shape"):
        image_grid(torch.zeros(8, 8))


def test_save_image_grid_png_round_trip(tmp_path):
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    path = save_image_grid(x, tmp_path / "sub" / "grid.png", nrow=2)
    assert path == tmp_path / "sub" / "grid.png"
    image = _read_png(path)
    assert np.array_equal(np.asarray(image), np.asarray(image_grid(x, nrow=2)))


def test_failed_save_keeps_previous_png(tmp_path, monkeypatch):
    path = save_image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "grid.png")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_image_grid(torch.ones(4, 1, 4, 4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


# --- matplotlib figures ----------------------------------------------------------------------


def test_save_scatter_2d(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = save_scatter_2d(
        torch.randn(300, 2, generator=g),
        tmp_path / "scatter.png",
        reference=torch.randn(500, 2, generator=g) + 2,
        title="samples",
    )
    width, height = _read_png(path).size
    assert 300 <= width <= 1000 and 300 <= height <= 1000
    with pytest.raises(DataError, match=r"expected shape \[N, 2\]"):
        save_scatter_2d(torch.zeros(10, 3), tmp_path / "bad.png")


def test_save_forward_strip(tmp_path):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(5, 1, 8, 8, generator=g).clamp(-1, 1)
    ts = [0, 10, 100, 500, 1000]
    path = save_forward_strip(frames, ts, tmp_path / "strip.png", [1.0, 0.9, 0.5, 0.1, 4e-5])
    width, height = _read_png(path).size
    assert width > 3 * height and 100 <= height <= 400  # one row of 5 images
    save_forward_strip(frames[:, :, :, :], ts, tmp_path / "plain.png", None)
    with pytest.raises(DataError, match="5 frames but 4 timesteps"):
        save_forward_strip(frames, ts[:4], tmp_path / "bad.png")


def test_save_trajectory(tmp_path):
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(4, 10, 3, 8, 8, generator=g)
    path = save_trajectory(xt, xt.tanh(), [1000, 500, 100, 1], tmp_path / "traj.png")
    width, height = _read_png(path).size
    assert height > width  # 8 chains drawn (of 10), two rows each, 4 columns
    with pytest.raises(DataError, match="differ in shape"):
        save_trajectory(xt, xt[:, :2], [1000, 500, 100, 1], tmp_path / "bad.png")
    with pytest.raises(DataError, match="save_trajectory_2d"):
        save_trajectory(torch.zeros(4, 10, 2), torch.zeros(4, 10, 2), [4, 3, 2, 1], tmp_path / "b")


def test_trajectory_rows_are_each_chains_xt_above_its_x0_hat(tmp_path, monkeypatch):
    """The figure is one picture: row 2i holds chain i's x_t at each t, row 2i + 1 its x̂_0."""
    seen, grid = {}, chains.image_grid

    def spy(x, nrow, scale):
        seen.update(x=np.asarray(x), nrow=nrow, scale=scale)
        return grid(x, nrow=nrow, scale=scale)

    monkeypatch.setattr(chains, "image_grid", spy)
    g = torch.Generator().manual_seed(1)
    xt, x0 = torch.rand(3, 10, 1, 4, 5, generator=g), torch.rand(3, 10, 1, 4, 5, generator=g)
    save_trajectory(xt, x0, [3, 2, 1], tmp_path / "traj.png")
    assert seen["nrow"] == 3 and seen["scale"] == 1
    tiles = seen["x"].reshape(2 * chains.MAX_CHAINS, 3, 1, 4, 5)
    for i in range(chains.MAX_CHAINS):
        for j in range(3):
            assert np.array_equal(tiles[2 * i, j], xt[j, i].double().numpy())
            assert np.array_equal(tiles[2 * i + 1, j], x0[j, i].double().numpy())


def test_save_trajectory_2d(tmp_path):
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(5, 200, 2, generator=g) * torch.linspace(1, 0.2, 5).view(5, 1, 1)
    path = save_trajectory_2d(xt, [1000, 750, 500, 250, 0], tmp_path / "t2d.png")
    width, height = _read_png(path).size
    assert width > 3 * height
    save_trajectory_2d(xt[:1], [1000], tmp_path / "one.png", reference=torch.zeros(10, 2))
    with pytest.raises(DataError, match=r"\[K, N, 2\]"):
        save_trajectory_2d(torch.zeros(5, 200, 3), list(range(5)), tmp_path / "bad.png")


def test_save_per_timestep(tmp_path):
    t = np.arange(1, 201)
    per_t = {"eps": np.exp(-t / 40.0), "x0": torch.exp(-torch.arange(1, 101) / 20.0)}
    width, height = _read_png(save_per_timestep(per_t, tmp_path / "a.png", title="L_t")).size
    assert 400 <= width <= 1200 and 250 <= height <= 800
    signed = {"difference": np.sin(t / 10.0)}  # non-positive values: linear axis
    _read_png(save_per_timestep(signed, tmp_path / "b.png", ylabel="bits", logy=True))
    with pytest.raises(DataError, match="no series"):
        save_per_timestep({}, tmp_path / "c.png")


def test_save_bar_chain(tmp_path):
    values = {"-ELBO": (1.234, 0.01), "-log p": (1.21, 0.012), "H(data)": (1.15, 0.0)}
    width, height = _read_png(save_bar_chain(values, tmp_path / "bars.png", title="nats")).size
    assert width > height >= 150
    _read_png(save_bar_chain({"gap": (-0.5, 0.1)}, tmp_path / "neg.png"))


# --- HTML ------------------------------------------------------------------------------------


def test_write_html_embeds_images_and_tables(tmp_path):
    png = save_image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "grid.png")
    table = html_table([{"model": "eps", "nll_nats": 1.234567}, {"model": "<x0>"}])
    path = write_html(
        tmp_path / "report.html",
        "Run <1>",
        [("Samples", png), ("Likelihood", table)],
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<title>Run &lt;1&gt;</title>" in text
    prefix = 'src="data:image/png;base64,'
    assert prefix in text
    data = text.split(prefix, 1)[1].split('"', 1)[0]
    assert base64.b64decode(data) == png.read_bytes()  # stands alone: image is inside
    assert "<th>model</th><th>nll_nats</th>" in text
    assert "<td>1.235</td>" in text and "<td>&lt;x0&gt;</td><td></td>" in text
    assert str(tmp_path) not in text


def test_write_html_missing_image(tmp_path):
    with pytest.raises(DataError, match="missing.png: cannot read the image"):
        write_html(tmp_path / "r.html", "t", [("a", tmp_path / "missing.png")])
    assert not (tmp_path / "r.html").exists()
