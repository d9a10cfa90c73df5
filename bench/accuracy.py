"""Max |y - y_float64| of gncpu.group_norm in float32, the README's accuracy table.

    python bench/accuracy.py [--seed 7]

Over shapes with G = 1, G = C, ranks 3-5 and SD sizes, NCHW and NHWC, unit
and N(0,1) affine parameters, for data N(0,1) + offset and each activation,
against gncpu.reference (float64). Deterministic for a given seed; takes ~20 s.
"""
import argparse
import itertools

import numpy as np

import gncpu
from gncpu import reference

SHAPES = [((1, 320, 64, 64), 32), ((2, 64, 17, 9), 8), ((1, 32, 64, 64), 1), ((3, 12, 5), 12),
          ((1, 640, 32, 32), 32), ((2, 6, 130, 70), 3), ((5, 10, 3, 3, 3), 5)]
OFFSETS = [0.0, 1e4, 1e6]
ACTIVATIONS = [None, "silu", "gelu"]


def worst_error(rng, offset, activation, channels_last):
    worst = 0.0
    for shape, groups in SHAPES:
        x = (rng.standard_normal(shape) + offset).astype(np.float32)
        channels = shape[1]
        affine = [(None, None), (rng.standard_normal(channels).astype(np.float32),
                                 rng.standard_normal(channels).astype(np.float32))]
        if channels_last:
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        for weight, bias in affine:
            kwargs = dict(activation=activation, channels_last=channels_last)
            y = gncpu.group_norm(x, groups, weight, bias, **kwargs)
            ref = reference.group_norm(x, groups, weight, bias, **kwargs)
            worst = max(worst, float(np.abs(y - ref).max()))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"gncpu {gncpu.__version__}, float32, seed {args.seed}: max |y - y_float64|\n")
    print("| data | activation | NCHW | NHWC |")
    print("|---|---|---|---|")
    for offset, activation in itertools.product(OFFSETS, ACTIVATIONS):
        errors = [worst_error(rng, offset, activation, layout) for layout in (False, True)]
        data = f"{offset:g} + N(0,1)" if offset else "N(0,1)"
        print(f"| {data} | {activation or '-'} | {errors[0]:.1e} | {errors[1]:.1e} |")


if __name__ == "__main__":
    main()
