"""``ddpm forward``: the forward process q(x_t | x_0) applied to one image, as a strip."""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm.data.images import read_image
from ddpm.errors import ConfigError, DataError
from ddpm.memory import check_fits
from ddpm.process.forward import q_sample
from ddpm.process.rng import seeded_generator
from ddpm.process.schedule import NoiseSchedule
from ddpm.report.chains import save_forward_strip


def forward_strip(
    image: str | Path,
    out: str | Path = "forward.png",
    T: int = 1000,
    schedule: str = "linear",
    frames: int = 8,
    size: int | None = None,
    seed: int = 0,
) -> Path:
    """The forward process q(x_t | x_0) applied to one image at ``frames`` values of t,
    from t = 0 (the image) to t = T (almost pure noise), [Ho20] eq. (4)."""
    image = Path(image)
    if size is not None and size < 2:
        raise ConfigError(f"size must be >= 2 pixels (got {size})", params=("size",))
    if not image.is_file():
        raise DataError(f"{image}: no such image file; give the path of a PNG or JPEG image")
    if size is not None:  # float64 noise and x_t per frame, a float32 copy; refused up front
        k = max(2, min(frames, T + 1))
        check_fits(
            (12 * k + 16) * 3 * size**2,
            f"size {size}: {k} frames of a 3x{size}x{size} image",
            "use a smaller size",
            params=("size",),
        )
    s = NoiseSchedule.from_name(schedule, T)
    pixels = read_image(image, size, grayscale=False)  # uint8 [C, H, W]
    x0 = torch.tensor(pixels, dtype=torch.float64) / 127.5 - 1
    if frames < 2:
        raise ConfigError(f"frames must be >= 2 (got {frames})", params=("frames",))
    ts = sorted({round(k * T / (frames - 1)) for k in range(frames)})  # t = 0 (the image) .. T
    g = seeded_generator(seed)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor(ts)
    xt = q_sample(s, x0.expand(len(ts), *x0.shape), t, noise=noise.expand(len(ts), *x0.shape))
    alpha_bars = [float(s.alpha_bar[k]) for k in ts]
    return save_forward_strip(xt.clamp(-1, 1).float(), ts, out, alpha_bars=alpha_bars)
