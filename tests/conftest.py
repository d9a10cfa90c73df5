"""Shared test helpers: tolerances (stated once, here), test data, oracle checks.

Every fast path is compared with the float64 oracle `gncpu.reference.group_norm`
computed from the very same input values (a float32 input is widened exactly),
so the errors measured are the kernel's own, not the input's rounding.
"""
import os
import sys

import numpy as np
import pytest

import gncpu
from gncpu import reference
from gncpu.kernel import available_variants

# ---------------------------------------------------------------------------
# Tolerances: max |y - y_ref64| allowed.
#
# Float32 bounds are the library's promise and must hold both with unit weight
# / zero bias and with N(0,1) weight and bias (tests use both). "offset" data
# is x = offset + N(0,1); "tiny_std" data has std 1e-6 and is normalized with
# eps = 1e-12, so the kernel really divides by ~1e-6 (with eps = 1e-5 the
# output would be ~3e-4 and any error invisible).
F32_TOL = {
    "normal": 2e-6,
    "offset_1e3": 2e-5,
    "offset_1e4": 2e-5,
    "offset_1e6": 2e-5,
    "tiny_std": 2e-6,
    "tiny_std_offset": 2e-6,
}
# Float64: ~1e-12 on well-conditioned data. With an offset the problem itself
# has condition ~|offset|/std, and the oracle's own rounding (float64 eps *
# 1e6 = 2e-10) dominates, so the bound grows with it.
F64_TOL = {
    "normal": 1e-12,
    "offset_1e3": 1e-10,
    "offset_1e4": 1e-10,
    "offset_1e6": 1e-8,
    "tiny_std": 1e-12,
    "tiny_std_offset": 1e-8,
}
# Float16 in -> float16 out, computed in float32: within this many float16
# ulps of the oracle rounded to float16 (or, near zero where float16 spacing
# is finer than float32's absolute error, within F32_TOL).
F16_MAX_ULPS = 1
# Fused epilogues (activation after the affine), float32 on N(0,1) data
# (with an offset, F32_TOL's offset bound still applies).
FUSED_TOL = 4e-6
# A float32 activation's own error, relative to max(1, |y|), measured on the
# kernel's own pre-activation output (2 float32 ulps; 1.37e-7 measured).
ACTIVATION_REL_TOL = 2.5e-7
# Arbitrary (hypothesis) float32 values: the error is bounded by a few dozen
# float32 roundings of the largest term in y = (x - mean) * rstd * w + b.
F32_GENERIC_ULPS = 64

# (offset, std, eps) of each kind of test data.
DATA_KINDS = {
    "normal": (0.0, 1.0, 1e-5),
    "offset_1e3": (1e3, 1.0, 1e-5),
    "offset_1e4": (1e4, 1.0, 1e-5),
    "offset_1e6": (1e6, 1.0, 1e-5),
    "tiny_std": (0.0, 1e-6, 1e-12),
    "tiny_std_offset": (1.0, 1e-6, 1e-12),
}



def offset_kind(dtype):
    """The large-offset data for a dtype. float16 rounds 1e4 + N(0,1) to a
    constant 1e4 (spacing 8 there), so it gets 1e3 + N(0,1) (spacing 0.5):
    still far beyond what float16 arithmetic could sum (max 65504)."""
    return "offset_1e3" if np.dtype(dtype) == np.float16 else "offset_1e4"


# How an (N, C, *spatial) problem reaches gncpu:
#   nchw          the array itself
#   nhwc          an (N, *spatial, C) array with channels_last=True
#   nchw_strided  an (N, C, *spatial)-shaped view of (N, *spatial, C) memory, as
#                 np.transpose of an NHWC array or a torch channels_last tensor
LAYOUTS = ["nchw", "nhwc", "nchw_strided"]


def to_layout(a, layout):
    """An NCHW array `a` as the given layout (see LAYOUTS): (array, kwargs)."""
    if layout == "nchw":
        return a, {}
    nhwc = np.ascontiguousarray(np.moveaxis(a, 1, -1))
    if layout == "nhwc":
        return nhwc, {"channels_last": True}
    if layout == "nchw_strided":
        return np.moveaxis(nhwc, -1, 1), {}
    raise ValueError(layout)


def is_channels_last(a):
    """a is (N, C, *spatial)-shaped with (N, *spatial, C) memory."""
    return np.moveaxis(a, 1, -1).flags.c_contiguous


def assert_same_layout(a, b):
    """a and b have the same memory layout (strides, on axes longer than 1)."""
    assert a.shape == b.shape, f"shape {a.shape} vs {b.shape}"
    scale = b.itemsize / a.itemsize
    mismatched = [axis for axis, size in enumerate(a.shape)
                  if size > 1 and a.strides[axis] * scale != b.strides[axis]]
    assert not mismatched, f"strides {a.strides} vs {b.strides} differ on axes {mismatched}"


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = available_variants()
# The variant gncpu runs: the best one, unless GNCPU_KERNEL forces another.
SELECTED_VARIANT = os.environ.get("GNCPU_KERNEL") or VARIANTS[-1][0]


def tolerance(dtype, kind, fused=False):
    """The max |error| allowed for a float32/float64 result on `kind` data;
    fused: an activation follows (float32 on N(0,1) data gets FUSED_TOL)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return F64_TOL[kind]
    if dtype == np.float32:
        return max(F32_TOL[kind], FUSED_TOL) if fused else F32_TOL[kind]
    raise ValueError(f"no absolute tolerance for {dtype}: float16 is checked in ulps")


def make_data(rng, shape, dtype, kind="normal"):
    """x = offset + std * N(0,1) in `dtype`, and the eps that goes with it."""
    offset, std, eps = DATA_KINDS[kind]
    x = (offset + std * rng.standard_normal(shape)).astype(dtype)
    return x, eps


def make_affine(rng, channels, dtype, mode):
    """(weight, bias): 'none' -> (None, None); 'unit' -> ones/zeros arrays;
    'normal' -> N(0,1) arrays."""
    if mode == "none":
        return None, None
    if mode == "unit":
        return np.ones(channels, dtype), np.zeros(channels, dtype)
    if mode == "normal":
        return (rng.standard_normal(channels).astype(dtype),
                rng.standard_normal(channels).astype(dtype))
    raise ValueError(mode)


def oracle(x, num_groups, weight=None, bias=None, eps=1e-5, **kwargs):
    return reference.group_norm(x, num_groups, weight, bias, eps, **kwargs)


def assert_same_nans(y, ref):
    y_nan, ref_nan = np.isnan(np.asarray(y, np.float64)), np.isnan(ref)
    if not np.array_equal(y_nan, ref_nan):
        where = np.argwhere(y_nan != ref_nan)[:5].tolist()
        raise AssertionError(f"NaN positions differ from the oracle at {where} "
                             f"({int(y_nan.sum())} NaN in result, {int(ref_nan.sum())} in oracle)")


def assert_close(y, ref, tol):
    """y matches the float64 oracle within `tol` (absolute), NaN where it is NaN."""
    assert y.shape == ref.shape, f"shape {y.shape} != oracle shape {ref.shape}"
    assert_same_nans(y, ref)
    finite = ~np.isnan(ref)
    diff = np.abs(np.asarray(y, np.float64)[finite] - ref[finite])
    err = float(diff.max(initial=0.0))
    if not err <= tol:
        worst = np.argwhere(finite)[int(np.argmax(diff))].tolist()
        raise AssertionError(f"max |y - oracle| = {err:.3e} > {tol:.1e} at index {worst}")


def f16_ulp_distance(a, b):
    """Elementwise distance in float16 ulps (0 where equal, +0 == -0)."""
    def ordered(v):
        bits = np.ascontiguousarray(v, np.float16).view(np.int16).astype(np.int32)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)
    return np.abs(ordered(a) - ordered(b))


def assert_f16_close(y, ref, kind="normal", fused=False):
    """float16 y within F16_MAX_ULPS of the float64 oracle rounded to float16.

    Near zero float16's spacing (down to 6e-8 for subnormals) is finer than the
    absolute error float32 arithmetic itself is allowed (F32_TOL[kind]); there
    the float32 bound applies instead.
    """
    assert y.dtype == np.float16, f"dtype {y.dtype}, expected float16"
    assert y.shape == ref.shape
    ref16 = ref.astype(np.float16)
    assert_same_nans(y, ref16.astype(np.float64))
    finite = ~np.isnan(ref16)
    ulps = f16_ulp_distance(y[finite], ref16[finite])
    abs_err = np.abs(y[finite].astype(np.float64) - ref[finite])
    bad = (ulps > F16_MAX_ULPS) & (abs_err > tolerance(np.float32, kind, fused))
    if bad.any():
        i = int(np.argmax(np.where(bad, ulps, -1)))
        raise AssertionError(f"{int(bad.sum())} float16 results beyond {F16_MAX_ULPS} ulp of the rounded "
                             f"oracle, worst {int(ulps[i])} ulps: got {y[finite][i]}, oracle "
                             f"{ref[finite][i]!r}")


def assert_matches_oracle(y, ref, dtype, kind, fused=False):
    """Dispatch on the input dtype: absolute tolerance, or float16 ulps."""
    if np.dtype(dtype) == np.float16:
        assert_f16_close(y, ref, kind, fused)
    else:
        assert y.dtype == np.dtype(dtype)
        assert_close(y, ref, tolerance(dtype, kind, fused))


def run_variant(module, x, num_groups, weight=None, bias=None, eps=1e-5, threads=1, out=None, *,
                activation=None, channels_last=False, skip=None, skip_bias=None, sum_out=None):
    """Call one compiled variant's kernel directly, bypassing the Python layer
    (whose thread policy runs small inputs on one thread). Arrays must be what
    the kernel expects: C-contiguous, of the compute dtype."""
    if out is None:
        out = np.empty_like(x)
    module.group_norm(x, out, weight, bias, num_groups, eps, module.ACTIVATION_CODES[activation],
                      threads, channels_last, skip, skip_bias, sum_out)
    return out


def assert_bitwise_equal(a, b, what=""):
    """Same bytes (NaN payloads included), not merely equal values."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    if not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
        with np.errstate(invalid="ignore"):
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        raise AssertionError(f"results differ bitwise {what}: max |diff| = {np.nanmax(diff):.3e}, "
                             f"{int(np.count_nonzero(a != b))} elements")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so each test's data is fixed
    but different tests get different data."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def restore_threads():
    """Tests that call gncpu.set_num_threads leave the default as they found it."""
    yield
    gncpu.set_num_threads(None)


def subprocess_env(**overrides):
    """Environment for `python -m gncpu ...` subprocesses: they must import the
    same gncpu as this test process (an in-place build or an installed one)."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(gncpu.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.update({k: v for k, v in overrides.items() if v is not None})
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
    return env


def python_command(*args):
    """sys.executable with -P on 3.11+: cwd (the repo root, holding an unbuilt
    source tree in CI) must not shadow the gncpu under test."""
    flags = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *flags, *args]
