#!/usr/bin/env python
"""gncpu inside PyTorch models, interleaved in one run:

  models: a diffusers AutoencoderKL decoder (Stable Diffusion's VAE config,
          random weights) and a diffusers UNet2DModel; contenders: eager
          torch, gncpu.torch.optimize(model), torch.compile (inductor) and
          torch.compile(backend="gncpu"), the last two also with inductor's
          freezing. End-to-end time, each contender's
          ratio to eager (median of per-round ratios), and the share of
          GroupNorm + SiLU in each (torch.profiler; inductor's generated kernels
          are named after the ops they fuse and record events with
          cpp.enable_kernel_profile, set for the whole run).
  op:     gncpu.torch.group_norm(x, 32, w, b, activation="silu") vs torch's
          F.silu(F.group_norm(x)) on SD shapes, float32 and bfloat16, with a
          copy floor (x.clone()).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_torch.py --threads 2
    python bench/bench_torch.py --quick      # small models, few rounds (a smoke run)

Prints Markdown tables (and writes them to --out, default bench/results/torch.md).
"""
import argparse
import copy
import os
import statistics
import time

import torch
import torch._inductor.config
import torch.nn.functional as F

import gncpu
from gncpu.bench.report import cpu_model
import gncpu.torch as gt

OP_SHAPES = ("1x320x64x64", "1x640x32x32", "1x1280x16x16", "1x512x64x64", "1x128x256x256")


def vae_decoder(latent):
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(  # Stable Diffusion 1.x/2.x VAE configuration
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=8 * latent)
    return vae.decoder.eval(), (torch.randn(1, 4, latent, latent),)


def unet(size):
    import diffusers

    torch.manual_seed(0)
    model = diffusers.UNet2DModel(  # a DDPM-style UNet, attention at the lower resolutions
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 512), norm_num_groups=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")).eval()
    return model, (torch.randn(1, 3, size, size), torch.tensor([500]))


def contenders(model):
    """name -> callable, each on its own copy of the model."""
    frozen = torch.compile(copy.deepcopy(model), options={"freezing": True})
    return {"eager": model, "optimize": gt.optimize(copy.deepcopy(model)),
            "inductor": torch.compile(copy.deepcopy(model)),
            "gncpu backend": torch.compile(copy.deepcopy(model), backend="gncpu"),
            "inductor, freezing": frozen,
            "gncpu backend, freezing": torch.compile(copy.deepcopy(model), backend="gncpu",
                                                     options={"freezing": True})}


def output(result):
    return result.sample if hasattr(result, "sample") else result


def is_gn_or_silu(name):
    name = name.lower()
    return any(key in name for key in ("group_norm", "silu", "gncpu::"))


def gn_silu_share(fn, inputs):
    """Fraction of self CPU time in GroupNorm/SiLU events (aten ops, gncpu's
    op, inductor kernels whose name carries them)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*inputs)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    part = sum(e.self_cpu_time_total for e in events if is_gn_or_silu(e.key))
    return part / total if total else float("nan")


def interleaved(fns, inputs, rounds):
    """Per-round times of each callable, the order rotating each round."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name](*inputs)
            times[name].append(time.perf_counter() - start)
    return times


def ratio_to(times, name, base):
    return statistics.median(t / b for t, b in zip(times[name], times[base]))


def bench_model(title, model, inputs, rounds):
    with torch.inference_mode():
        fns = contenders(model)
        ref = output(model(*inputs))
        errors = {}
        for name, fn in fns.items():
            start = time.perf_counter()
            result = output(fn(*inputs))  # first call: compiles
            warmup = time.perf_counter() - start
            errors[name] = ((result - ref).abs().max() / ref.abs().max()).item(), warmup
            fn(*inputs)
        shares = {}
        for name, fn in fns.items():
            shares[name] = gn_silu_share(fn, inputs)
        times = interleaved(fns, inputs, rounds)
    lines = [f"### {title}", "",
             "| contender | median ms | time / eager | GN+SiLU share | max rel. diff vs eager | first call s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in fns:
        lines.append(f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | "
                     f"{ratio_to(times, name, 'eager'):.3f} | {shares[name] * 100:.1f}% | "
                     f"{errors[name][0]:.1e} | {errors[name][1]:.1f} |")
    lines.append("")
    lines.append(f"gncpu backend / inductor: {ratio_to(times, 'gncpu backend', 'inductor'):.3f}; "
                 f"with freezing: {ratio_to(times, 'gncpu backend, freezing', 'inductor, freezing'):.3f}; "
                 f"optimize / eager: {ratio_to(times, 'optimize', 'eager'):.3f} "
                 f"({rounds} interleaved rounds, median of per-round ratios)")
    if hasattr(fns["optimize"], "gncpu_report"):
        report = fns["optimize"].gncpu_report
        lines.append(f"optimize(): {len(report.replaced)} GroupNorm replaced, {report.fused_count} SiLU fused")
    return lines


def bench_op(shapes, rounds):
    lines = ["### The op alone: GN + SiLU, 32 groups", "",
             "| shape | dtype | gncpu us | torch us | copy us | torch / gncpu | gncpu / copy |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for spec in shapes:
        shape = tuple(int(v) for v in spec.split("x"))
        for dtype in (torch.float32, torch.bfloat16):
            # rotate over >= 64 MiB of inputs so no contender gets a warm cache
            count = max(2, (64 << 20) // (torch.Size(shape).numel() * 4))
            xs = [torch.randn(shape).to(dtype) for _ in range(count)]
            w, b = torch.randn(shape[1]).to(dtype), torch.randn(shape[1]).to(dtype)
            step = iter(range(1 << 60))
            fns = {
                "gncpu": lambda: gt.group_norm(xs[next(step) % count], 32, w, b, 1e-5, "silu"),
                "torch": lambda: F.silu(F.group_norm(xs[next(step) % count], 32, w, b, 1e-5)),
                "copy": lambda: xs[next(step) % count].clone(),
            }
            with torch.inference_mode():
                for fn in fns.values():
                    fn()
                times = interleaved(fns, (), rounds)
            med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
            lines.append(f"| {spec}/32 | {str(dtype).replace('torch.', '')} | {med['gncpu']:.0f} | "
                         f"{med['torch']:.0f} | {med['copy']:.0f} | {ratio_to(times, 'torch', 'gncpu'):.2f} | "
                         f"{ratio_to(times, 'gncpu', 'copy'):.2f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per model")
    parser.add_argument("--op-rounds", type=int, default=60)
    parser.add_argument("--latent", type=int, default=16, help="VAE latent size (8x the image size)")
    parser.add_argument("--unet-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument("--skip", nargs="*", default=(), choices=("vae", "unet", "op"))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "torch.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.op_rounds, args.latent, args.unet_size = 3, 5, 4, 16
    torch.set_num_threads(args.threads)
    # compiled kernels record profiler events (a no-op check when no profiler runs)
    torch._inductor.config.cpp.enable_kernel_profile = True
    lines = []

    def emit(section):  # print each section as it completes: a full run takes minutes
        lines.extend(section + [""])
        print("\n".join(section + [""]), flush=True)

    emit([f"torch {torch.__version__}, gncpu {gncpu.__version__}, {args.threads} threads, {cpu_model() or 'unknown CPU'}"])
    if "vae" not in args.skip:
        model, inputs = vae_decoder(args.latent)
        size = 8 * args.latent
        emit(bench_model(f"diffusers AutoencoderKL decoder (SD VAE config), latent 1x4x{args.latent}x"
                         f"{args.latent} -> {size}x{size}", model, inputs, args.rounds))
    if "unet" not in args.skip:
        model, inputs = unet(args.unet_size)
        emit(bench_model(f"diffusers UNet2DModel (128-256-256-512), 1x3x{args.unet_size}x{args.unet_size}",
                         model, inputs, args.rounds))
    if "op" not in args.skip:
        emit(bench_op(OP_SHAPES[:2] if args.quick else OP_SHAPES, args.op_rounds))
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
