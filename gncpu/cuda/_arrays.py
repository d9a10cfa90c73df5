"""Recognize CUDA arrays without importing any GPU library."""

__all__ = ["is_cuda_array"]

# DLPack device types whose memory a CUDA kernel can read: kDLCUDA and
# kDLCUDAManaged (kDLCUDAHost is pinned host memory: no).
_DLPACK_CUDA_DEVICES = (2, 13)


def is_cuda_array(obj):
    """True if `obj` is an array in CUDA device memory: it exposes
    __cuda_array_interface__ (CuPy, Numba, torch CUDA tensors), or
    __dlpack_device__() reports a CUDA device. Duck-typed: imports nothing,
    never raises (a torch CPU tensor's __cuda_array_interface__ raises, and
    counts as no)."""
    if isinstance(obj, type):
        return False
    try:
        if getattr(obj, "__cuda_array_interface__", None) is not None:
            return True
    except Exception:
        pass
    try:
        device = getattr(obj, "__dlpack_device__", None)
        if device is None:
            return False
        return int(device()[0]) in _DLPACK_CUDA_DEVICES
    except Exception:
        return False
