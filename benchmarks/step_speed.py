"""Step speed: ddpm's U-Net against diffusers' UNet2DModel, and ddpm's loops against bare steps.

All timings run in one process, alternating the contenders within each repeat (A B A B ...),
so a load that comes and goes on a shared machine hits both alike. Each repeat times N
iterations after a warm-up (N chosen so that one repeat uses about --seconds of CPU); reported
are the median time per iteration over the repeats and its range (min, max), and the ratio of
the two contenders per repeat (median and range), by two clocks: CPU time of the process (the
work done; robust to other processes on a busy machine) and wall time.

  (a) train step  forward + MSE on eps + backward + AdamW, at matched parameter counts
  (b) forward     one no-grad forward pass
      at 8x8 (ddpm's default digits net) and at 28x28 (a ~2.7M-parameter net, attention at 7x7)
  (c) loop        ``Trainer.train_step`` on digits (default config) against a bare step of the
                  same net and batch size: forward, L_simple, backward, AdamW, EMA update
  (d) sampling    ``ddpm.sampling.ancestral.sample`` (T = 1000 ancestral steps) against the T bare
                  no-grad forward passes it needs, same batch
  (e) threads     (on request) the 8x8 train step on one thread against several
  (f) rewrites    (on request) the U-Net's train step against the same net with its upsampling,
                  1x1 convolutions, attention and output convolution run as their definitions
                  (a nearest x2 upsample then the 3x3 convolution; F.conv2d; qkv and proj as
                  1x1 convolutions): what ``UpsampleConv``, ``Conv1x1``, ``AttnBlock``'s layout
                  and ``FewOutputsConv`` give

Both nets get the same optimizer (``ddpm.training.loop.adamw``) and one attention head, so the
ratios measure the networks. Results go to --out as JSON; a markdown table is printed.

    OMP_NUM_THREADS=1 python benchmarks/step_speed.py --threads 1
    python benchmarks/step_speed.py --quick          # seconds: a smoke test of the script
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ddpm.data import load_dataset
from ddpm.model import Model
from ddpm.nets import build_model
from ddpm.nets.unet import AttnBlock, Conv1x1, FewOutputsConv, UpsampleConv
from ddpm.runs import run as runs
from ddpm.sampling.ancestral import sample
from ddpm.training.loop import Trainer, adamw

# (ddpm ModelConfig, diffusers block_out_channels, diffusers norm groups) per image size: the
# two share depth (one residual block per level, 2 per level up in diffusers), the levels with
# attention (the lowest resolution and the middle) and parameter counts within ~5 %.
NETS = {
    8: (ModelConfig(), (28, 56), 4),
    28: (
        ModelConfig(channels=60, channel_mults=(1, 2, 2), attn_resolutions=(7,)),
        (50, 100, 100),
        5,
    ),
}
QUICK_NETS = {
    8: (ModelConfig(channels=8), (8, 16), 4),
    28: (ModelConfig(channels=8, channel_mults=(1, 2, 2), attn_resolutions=(7,)), (8, 16, 16), 4),
}


def diffusers_unet(size: int, block_out_channels: tuple[int, ...], groups: int):
    """UNet2DModel with attention at the last (lowest-resolution) level and one head."""
    from diffusers import UNet2DModel

    n = len(block_out_channels)
    down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1)
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=groups,
        attention_head_dim=None,  # one head, as ddpm's AttnBlock
    )


class DiffusersNet(torch.nn.Module):
    """diffusers' UNet2DModel behind ddpm's call signature net(x, t) -> Tensor."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def alternate(
    fns: dict[str, Callable[[], object]], repeats: int, seconds: float, warmup: int = 2
) -> dict[str, dict[str, list[float]]]:
    """{clock: {name: seconds per call, one value per repeat}}; the fns alternate within a
    repeat. Clocks: 'cpu' (time.process_time, the work done: robust to other processes on a
    shared machine) and 'wall' (time.perf_counter)."""
    iters = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        t0 = time.process_time()
        fn()
        iters[name] = max(1, round(seconds / max(time.process_time() - t0, 1e-9)))
    n = min(iters.values())  # the same N for all, so each repeat does equal work per contender
    out: dict[str, dict[str, list[float]]] = {"cpu": {}, "wall": {}}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            out["cpu"].setdefault(name, []).append((time.process_time() - c0) / n)
            out["wall"].setdefault(name, []).append((time.perf_counter() - t0) / n)
    return out


def summary(times: dict[str, dict[str, list[float]]], base: str, other: str) -> dict:
    """Per clock: median and range (ms) of each, and the per-repeat ratio other / base."""
    res = {}
    for clock, by_name in times.items():
        ratios = [o / b for b, o in zip(by_name[base], by_name[other], strict=True)]
        res[clock] = {
            name: {
                "median_ms": 1e3 * statistics.median(v),
                "min_ms": 1e3 * min(v),
                "max_ms": 1e3 * max(v),
            }
            for name, v in by_name.items()
        }
        res[clock]["ratio"] = {
            "what": f"{other} / {base} time",
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        }
    return res


def train_step_fn(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
    opt = adamw(net.parameters(), TrainConfig())

    def step() -> None:
        loss = F.mse_loss(net(x, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def forward_fn(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor):
    @torch.no_grad()
    def forward() -> None:
        net(x, t)

    return forward


def fixed_batch(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, t, eps): one fixed batch of n single-channel size x size inputs (seed 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, size, size, generator=g)
    eps = torch.randn(x.shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    return x, t, eps


def ddpm_net(size: int, quick: bool) -> torch.nn.Module:
    """ddpm's U-Net of NETS (QUICK_NETS) at one image size, seed 0, in training mode."""
    torch.manual_seed(0)
    return build_model((QUICK_NETS if quick else NETS)[size][0], (1, size, size)).train()


def with_forward(net: torch.nn.Module, forwards: dict[type, Callable]) -> torch.nn.Module:
    """A copy of net whose modules of each type in forwards compute forwards[type](module, x)
    instead. (One copy for all types: a copy of a patched copy would keep closures over the
    first copy's modules.)"""
    net = copy.deepcopy(net)
    for m in net.modules():
        for kind, fn in forwards.items():
            if isinstance(m, kind):
                m.forward = lambda x, m=m, fn=fn: fn(m, x)
    return net


def nets_at(size: int, args: argparse.Namespace) -> dict:
    """(a) and (b) at one image size."""
    model_cfg, block_out, groups = (QUICK_NETS if args.quick else NETS)[size]
    torch.manual_seed(0)
    nets = {
        "ddpm": build_model(model_cfg, (1, size, size)),
        "diffusers": DiffusersNet(diffusers_unet(size, block_out, groups)),
    }
    x, t, eps = fixed_batch(args.batch_size, size)
    train = alternate(
        {k: train_step_fn(n.train(), x, t, eps) for k, n in nets.items()},
        args.repeats,
        args.seconds,
    )
    fwd = alternate(
        {k: forward_fn(n.eval(), x, t) for k, n in nets.items()}, args.repeats, args.seconds
    )
    return {
        "model_config": model_cfg.to_dict(),
        "diffusers_block_out_channels": list(block_out),
        "params": {k: n_params(n) for k, n in nets.items()},
        "train_step": summary(train, "ddpm", "diffusers"),
        "forward": summary(fwd, "ddpm", "diffusers"),
    }


class BareStep:
    """The least a training step must do, on a copy of the trainer's net and a fixed batch."""

    def __init__(self, trainer: Trainer) -> None:
        self.model = copy.deepcopy(trainer.model)
        self.ema = copy.deepcopy(trainer.ema)
        self.opt = adamw(self.model.parameters(), trainer.cfg.train)
        n, T = trainer.cfg.train.batch_size, trainer.diffusion.T
        self.g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, trainer.train_x.shape[0], (n,), generator=self.g)
        self.x0 = trainer.train_x[idx].float()
        ab = trainer.diffusion.schedule.alpha_bar.float()
        self.sqrt_ab, self.sqrt_1mab, self.T = ab.sqrt(), (1 - ab).sqrt(), T
        self.ema_params = list(self.ema.parameters())
        self.params = list(self.model.parameters())

    def __call__(self) -> None:
        t = torch.randint(1, self.T + 1, (self.x0.shape[0],), generator=self.g)
        eps = torch.randn(self.x0.shape, generator=self.g)
        shape = (-1, 1, 1, 1)
        xt = self.sqrt_ab[t].view(shape) * self.x0 + self.sqrt_1mab[t].view(shape) * eps
        loss = F.mse_loss(self.model(xt, t), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1 - 0.995)


def loop_vs_bare(args: argparse.Namespace) -> dict:
    """(c) Trainer.train_step on digits against BareStep."""
    train = TrainConfig(batch_size=args.batch_size)
    model = ModelConfig(channels=8) if args.quick else ModelConfig()
    cfg = RunConfig(model=model, train=train)
    trainer = Trainer(cfg, load_dataset(DataConfig(name="digits")), torch.device("cpu"))
    bare = BareStep(trainer)
    times = alternate({"bare": bare, "loop": trainer.train_step}, args.repeats, args.seconds)
    return {"params": n_params(trainer.model), **summary(times, "bare", "loop")}


def sampling_vs_bare(args: argparse.Namespace) -> dict:
    """(d) ancestral sampling against its T bare forward passes, same batch."""
    T = 20 if args.quick else 1000
    model = ModelConfig(channels=8) if args.quick else ModelConfig()
    cfg = RunConfig(model=model, diffusion=DiffusionConfig(T=T))
    spec = load_dataset(DataConfig(name="digits")).spec
    torch.manual_seed(0)
    diffusion, net = runs.build(cfg, spec)
    net.eval()
    for p in net.parameters():  # zero-initialised output layers would make every eps_hat 0
        p.data.normal_(0, 0.02)
    model = Model(diffusion, net, spec, clip=(-1.0, 1.0))
    n = args.sample_n
    x = torch.randn(n, *spec.shape, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def bare() -> None:
        for t in range(T, 0, -1):
            net(x, torch.full((n,), t, dtype=torch.long))

    def chain() -> None:
        g = torch.Generator().manual_seed(0)
        sample(model, n, g)

    times = alternate({"bare": bare, "sample": chain}, args.repeats, 0.0, warmup=1)
    return {"T": T, "n": n, **summary(times, "bare", "sample")}


def threads_vs_one(args: argparse.Namespace) -> dict:
    """(e) ddpm's default digits train step on one thread against --compare-threads threads
    (the thread count switched inside each call). Wall time is the clock that matters here:
    CPU time adds up over the threads."""
    x, t, eps = fixed_batch(args.batch_size, 8)
    step = train_step_fn(ddpm_net(8, args.quick), x, t, eps)
    k = args.compare_threads

    def on(n: int) -> Callable[[], None]:
        def call() -> None:
            torch.set_num_threads(n)
            step()

        return call

    times = alternate({"1": on(1), str(k): on(k)}, args.repeats, args.seconds)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    return {"threads": k, **summary(times, "1", str(k))}


def as_definitions(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of a ddpm U-Net whose UpsampleConv, Conv1x1, AttnBlock and FewOutputsConv
    modules compute their definitions (the same function and parameters, the plain kernels)."""

    def nearest_then_conv(m: UpsampleConv, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.conv2d(up, m.weight, m.bias, padding=1)

    def plain_1x1(m: Conv1x1, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, m.weight, m.bias)

    def plain_3x3(m: FewOutputsConv, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, m.weight, m.bias, padding=1)

    def conv_attention(m: AttnBlock, x: torch.Tensor) -> torch.Tensor:
        # qkv and proj as 1x1 convolutions of the [B, C, H, W] map, heads from channel groups
        b, c, h, w = x.shape
        qkv = F.conv2d(m.norm(x), m.qkv.weight, m.qkv.bias)
        qkv = qkv.reshape(b, 3, m.num_heads, c // m.num_heads, h * w).transpose(-1, -2)
        out = F.scaled_dot_product_attention(*qkv.unbind(dim=1))
        return x + F.conv2d(out.transpose(-1, -2).reshape(b, c, h, w), m.proj.weight, m.proj.bias)

    return with_forward(
        net,
        {
            UpsampleConv: nearest_then_conv,
            Conv1x1: plain_1x1,
            AttnBlock: conv_attention,
            FewOutputsConv: plain_3x3,
        },
    )


def rewrites(size: int, args: argparse.Namespace) -> dict:
    """(f) at one image size: ddpm's U-Net against itself with the plain kernels."""
    net = ddpm_net(size, args.quick)
    x, t, eps = fixed_batch(args.batch_size, size)
    steps = {
        "ddpm": train_step_fn(net, x, t, eps),
        "definitions": train_step_fn(as_definitions(net), x, t, eps),
    }
    times = alternate(steps, args.repeats, args.seconds)
    return summary(times, "ddpm", "definitions")


def table(res: dict, clock: str = "cpu") -> str:
    rows = [
        f"{clock} time per step, median (range) over {res['repeats']} repeats, "
        f"{res['threads']} thread(s), torch {res['torch']}",
        "",
        "| what | ddpm / base ms (range) | other ms (range) | other / base time (range) |",
        "|---|---|---|---|",
    ]

    def cell(d: dict) -> str:
        return f"{d['median_ms']:.2f} ({d['min_ms']:.2f}-{d['max_ms']:.2f})"

    def ratio(d: dict) -> str:
        return f"{d['median']:.2f}x ({d['min']:.2f}-{d['max']:.2f})"

    if "threads_vs_one" in res:
        tv = res["threads_vs_one"]
        k = str(tv["threads"])
        rows.append(
            f"| 8x8 train step, 1 vs {k} threads | {cell(tv[clock]['1'])} | "
            f"{cell(tv[clock][k])} | {ratio(tv[clock]['ratio'])} |"
        )
    for size, r in res.get("nets", {}).items():
        p = r["params"]
        for part in ("train_step", "forward"):
            s = r[part][clock]
            rows.append(
                f"| {size}x{size} {part}, ddpm {p['ddpm'] / 1e6:.3f}M vs diffusers "
                f"{p['diffusers'] / 1e6:.3f}M | {cell(s['ddpm'])} | {cell(s['diffusers'])} | "
                f"{ratio(s['ratio'])} |"
            )
    for size, r in res.get("rewrites", {}).items():
        rows.append(
            f"| {size}x{size} train step vs plain kernels | {cell(r[clock]['ddpm'])} | "
            f"{cell(r[clock]['definitions'])} | {ratio(r[clock]['ratio'])} |"
        )
    if "loop_vs_bare" in res:
        lv = res["loop_vs_bare"][clock]
        rows.append(
            f"| Trainer.train_step vs bare step (digits) | {cell(lv['bare'])} | "
            f"{cell(lv['loop'])} | {ratio(lv['ratio'])} |"
        )
    if "sampling_vs_bare" in res:
        sv = res["sampling_vs_bare"][clock]
        T, n = res["sampling_vs_bare"]["T"], res["sampling_vs_bare"]["n"]
        rows.append(
            f"| sample T={T} vs {T} forwards (n={n}) | {cell(sv['bare'])} | "
            f"{cell(sv['sample'])} | {ratio(sv['ratio'])} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seconds", type=float, default=1.0, help="time per repeat and contender")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sample-n", type=int, default=64, help="batch of the sampling chain")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 28], choices=sorted(NETS))
    p.add_argument("--quick", action="store_true", help="tiny nets and batches: a smoke test")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/step_speed.json"))
    p.add_argument(
        "--sections",
        nargs="+",
        default=["nets", "loop", "sampling"],
        choices=["nets", "loop", "sampling", "threads", "rewrites"],
        help="what to time: (a, b) nets, (c) loop, (d) sampling, (e) threads, (f) rewrites",
    )
    p.add_argument(
        "--compare-threads", type=int, default=2, help="(e): threads set against one thread"
    )
    args = p.parse_args()
    if args.quick:
        args.repeats, args.seconds, args.batch_size, args.sample_n = 2, 0.01, 8, 4
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "quick": args.quick,
    }
    if "threads" in args.sections:
        res["threads_vs_one"] = threads_vs_one(args)
    if "nets" in args.sections:
        res["nets"] = {str(s): nets_at(s, args) for s in args.sizes}
    if "rewrites" in args.sections:
        res["rewrites"] = {str(s): rewrites(s, args) for s in args.sizes}
    if "loop" in args.sections:
        res["loop_vs_bare"] = loop_vs_bare(args)
    if "sampling" in args.sections:
        res["sampling_vs_bare"] = sampling_vs_bare(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res, "cpu"))
    print()
    print(table(res, "wall"))
    print(f"\n{args.out}")


if __name__ == "__main__":
    main()
