"""The emulated kernels under ThreadSanitizer (and the alignment sanitizer):
no data race between CUDA threads, no float4 access off a 16-byte boundary.
Small shapes: TSan slows the thread-per-CUDA-thread emulation ~10x.

Negative controls prove the checks can fail: an emulation whose
__syncthreads does nothing must be reported, and so must float4 kernels
run on misaligned data."""
import numpy as np
import pytest

from cuda_emulation import unavailable
from gncpu import reference

driver = pytest.importorskip("cuda_emulation.driver", reason="tests/cuda_emulation is not importable")
if driver.compiler() is None:
    unavailable("no C++ compiler (g++ or $CXX) to build the CUDA emulation")


def _sanitized(**kw):
    try:
        return driver.build(sanitize=True, **kw)
    except RuntimeError as exc:
        if "tsan" in str(exc).lower() or "sanitize" in str(exc).lower():
            unavailable(f"the compiler cannot build with -fsanitize=thread: {exc}")
        raise


@pytest.fixture(scope="module")
def sanitized():
    return _sanitized()


CASES = [
    # shape, groups, channels_last, activation, chunk_elements, x_offset
    ((2, 8, 6, 6), 2, False, "silu", 64, 0),   # vec4 stats + apply, 5 chunks per group
    ((2, 6, 5, 5), 3, False, None, 32, 1),     # scalar kernels
    ((2, 5, 4, 8), 4, True, "silu", 32, 0),    # NHWC tiled stats (128 row lanes), vec4 apply
    ((1, 2, 2048), 2, True, None, 4096, 0),    # NHWC tiled, 1024-channel tiles, 8 warps merging
    ((1, 3, 3, 6), 2, True, None, 4096, 0),    # NHWC scalar, one chunk
]


@pytest.mark.parametrize("shape,groups,channels_last,activation,chunk,x_offset", CASES)
def test_race_free_and_correct(sanitized, shape, groups, channels_last, activation, chunk, x_offset):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) + 10).astype(np.float32)
    channels = shape[-1] if channels_last else shape[1]
    w = rng.standard_normal(channels).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    y, _ = driver.group_norm(sanitized, x, groups, w, b, activation=activation, channels_last=channels_last,
                             chunk_elements=chunk, x_offset=x_offset)
    expected = reference.group_norm(x, groups, w, b, activation=activation, channels_last=channels_last)
    assert np.abs(y - expected).max() <= 1e-5


def test_missing_syncthreads_is_reported():
    broken = _sanitized(drop_syncthreads=True)
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with pytest.raises(AssertionError, match="ThreadSanitizer: data race"):
        driver.group_norm(broken, x, 1)


def test_misaligned_float4_access_is_reported(sanitized):
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    with pytest.raises(AssertionError, match="misaligned address"):
        driver.group_norm(sanitized, x, 2, x_offset=1, assume_aligned=True)
