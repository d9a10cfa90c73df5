"""CUDA path: gncpu.group_norm on GPU arrays, through CuPy.

    import cupy, gncpu.cuda
    y = gncpu.cuda.group_norm(cupy_array, 32, weight, bias, activation="silu")

Importing this package imports neither CuPy nor torch: CuPy is imported the
first time a GPU array is normalized (or is_available() is asked), and the
kernels (group_norm.cu, shipped with the package) are compiled once per
device by CuPy's RawModule and cached.
"""
from pathlib import Path

from ._arrays import is_cuda_array

__all__ = ["is_available", "is_cuda_array", "group_norm", "config", "source_path", "ACTIVATIONS"]

# What the CUDA kernels fuse after the affine.
ACTIVATIONS = (None, "silu")


def source_path():
    """Path of the kernels' CUDA source (package data)."""
    return Path(__file__).resolve().parent / "group_norm.cu"


def is_available():
    """True if CuPy imports and sees at least one CUDA device. Never raises."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def config():
    """What the CUDA path would use, as a dict (for gncpu.show_config()):
    CuPy's version, the devices it sees, the kernels' launch constants.
    Imports CuPy if installed; never raises."""
    from . import plan

    info = {"cuda_block_threads": plan.BLOCK_THREADS, "cuda_chunk_elements": plan.CHUNK_ELEMENTS,
            "cuda_compile_options": " ".join(plan.compile_options())}
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        info["cupy"] = f"not available ({type(exc).__name__}: {exc})"
        return info
    info["cupy"] = cupy.__version__
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        names = []
        for index in range(count):
            props = cupy.cuda.runtime.getDeviceProperties(index)
            name = props["name"]
            names.append(f"{name.decode() if isinstance(name, bytes) else name} "
                         f"(sm_{props['major']}{props['minor']})")
        info["cuda_devices"] = ", ".join(names) if names else "none"
    except Exception as exc:
        info["cuda_devices"] = f"none ({type(exc).__name__}: {exc})"
    return info


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, activation=None,
               channels_last=False, out=None):
    """Group Normalization of a float32 CUDA array, on its device.

    input: a CuPy array, or any object exposing __cuda_array_interface__ or
        DLPack on a CUDA device (e.g. a torch CUDA tensor), shaped
        (N, C, *spatial), or (N, *spatial, C) with channels_last=True. An
        NCHW-shaped array whose strides are channels-last (a torch
        channels_last tensor) runs the NHWC kernels without a copy. float16
        is computed in float32 and returned as float16; float64 is refused
        (the kernels compute in float32: use the CPU path for float64).
    weight, bias: None or C values (device or host arrays).
    activation: None or "silu" (fused into the apply kernel).
    out: optional array of the input's kind, shape and dtype to write into;
        may be the input itself.

    Returns an array of the input's kind: CuPy in, CuPy out; torch in,
    torch out (through DLPack, no copy). Runs on CuPy's current stream.
    """
    from ._launcher import group_norm as launch

    return launch(input, num_groups, weight, bias, eps, activation=activation, channels_last=channels_last,
                  out=out)
