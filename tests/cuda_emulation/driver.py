"""Run gncpu's CUDA kernels on the CPU: build the unchanged group_norm.cu with
cuda_shim.h into a shared library, and execute the launches of
gncpu.cuda.plan on NumPy arrays through it.

    lib = build()                       # cached under the temp dir
    y = group_norm(lib, x, 4, weight, bias, activation="silu")

The plan is the one the CuPy launcher uses; every launch's arguments are
checked against the kernel's C signature (read from the compiled source),
which CuPy itself would not do.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gncpu.cuda import plan as cuda_plan
from gncpu.cuda import source_path

HERE = Path(__file__).resolve().parent
COMMON_FLAGS = ("-std=c++20", "-g", "-pthread", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas")
LIBRARY_FLAGS = ("-O2", "-fPIC", "-shared")
# ThreadSanitizer finds missing barriers; -fsanitize=alignment finds a float4
# access to an address that is not 16-byte aligned (a fault on a GPU).
SANITIZER_FLAGS = ("-O1", "-fsanitize=thread,alignment", "-fno-sanitize-recover=all")

_SCALAR_CODES = {"I": np.uint32, "i": np.int32, "Q": np.uint64, "f": np.float32}
_CTYPES = {"I": ctypes.c_uint32, "i": ctypes.c_int32, "Q": ctypes.c_uint64, "f": ctypes.c_float}


def compiler():
    """The C++ compiler, or None."""
    return os.environ.get("CXX") or shutil.which("g++")


def cache_dir():
    return Path(os.environ.get("GNCPU_EMULATION_CACHE", Path(tempfile.gettempdir()) / "gncpu-cuda-emulation"))


def _build(name, sources, flags):
    """Compile `sources` (with the kernel source's folder on the include
    path) once per content and flags; return the cached artefact's path."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (g++ or $CXX)")
    flags = COMMON_FLAGS + flags
    digest = hashlib.sha256()
    for path in (HERE / "cuda_shim.h", source_path(), *sources):
        digest.update(path.read_bytes())
    digest.update(" ".join((cxx,) + flags).encode())
    out = cache_dir() / f"{name}_{digest.hexdigest()[:16]}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, *flags, f"-I{source_path().parent}", *map(str, sources), "-o", str(tmp)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"building the emulation failed:\n{' '.join(cmd)}\n{result.stderr}")
        os.replace(tmp, out)  # atomic: concurrent builders never see half a file
    return out


def library_path():
    """The emulated kernels as a shared library for ctypes."""
    return _build("emulated_kernels.so", (HERE / "emulated_kernels.cpp",), LIBRARY_FLAGS)


def sanitized_replay_path(drop_syncthreads=False):
    """The emulated kernels and replay_main.cpp as an executable built with
    ThreadSanitizer and the alignment sanitizer. drop_syncthreads builds the
    negative control whose __syncthreads does nothing."""
    extra = ("-DGNCPU_EMU_DROP_SYNCTHREADS",) if drop_syncthreads else ()
    return _build("replay_tsan" + ("_nosync" if drop_syncthreads else ""),
                  (HERE / "emulated_kernels.cpp", HERE / "replay_main.cpp"), SANITIZER_FLAGS + extra)


class EmulatedKernels:
    """The compiled kernels, launched like a GPU's."""

    def __init__(self, path):
        self._lib = ctypes.CDLL(str(path))
        self._lib.emu_signature.restype = ctypes.c_char_p
        self._lib.emu_signature.argtypes = [ctypes.c_char_p]
        self._lib.emu_kernel_name.restype = ctypes.c_char_p
        self._lib.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 4 + [ctypes.c_void_p]
        self._lib.emu_launch.restype = ctypes.c_int
        self._lib.emu_set_barrier_timeout.argtypes = [ctypes.c_double]

    def kernel_names(self):
        return [self._lib.emu_kernel_name(i).decode() for i in range(self._lib.emu_kernel_count())]

    def signature(self, name):
        sig = self._lib.emu_signature(name.encode())
        if sig is None:
            raise KeyError(f"the .cu defines no kernel {name!r}")
        return sig.decode()

    def set_barrier_timeout(self, seconds):
        self._lib.emu_set_barrier_timeout(seconds)

    def launch(self, launch, buffers):
        """Run one plan Launch; buffer-name arguments are bound from `buffers`."""
        for index, arg in enumerate(launch.args):
            if isinstance(arg, str) and arg not in buffers:
                raise KeyError(f"{launch.kernel} argument {index}: no buffer {arg!r}")
        args = tuple(buffers[a] if isinstance(a, str) else a for a in launch.args)
        self.launch_raw(launch.kernel, launch.grid, launch.block, args)

    def launch_raw(self, kernel, grid, block, args):
        """Run `kernel` like CuPy's RawKernel call: NumPy arrays for pointers,
        NumPy scalars of the kernel's exact C types for the rest."""
        signature = self.signature(kernel)
        if len(signature) != len(args):
            raise TypeError(f"{kernel} takes {len(signature)} arguments, got {len(args)}")
        values = []
        for index, (code, arg) in enumerate(zip(signature, args)):
            if code == "p":
                if not isinstance(arg, np.ndarray):
                    raise TypeError(f"{kernel} argument {index} is a pointer, got {type(arg).__name__} {arg!r}")
                values.append(ctypes.c_void_p(arg.__array_interface__["data"][0]))
            else:
                if not isinstance(arg, _SCALAR_CODES[code]):
                    raise TypeError(f"{kernel} argument {index} is C type {code!r}, "
                                    f"got {type(arg).__name__} {arg!r}")
                values.append(_CTYPES[code](arg.item()))
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        (grid_x, grid_y, grid_z), (block_x, block_y, block_z) = grid, block
        if block_y != 1 or block_z != 1:
            raise ValueError(f"the emulation runs 1-D blocks, got {block}")
        if self._lib.emu_launch(kernel.encode(), grid_x, grid_y, grid_z, block_x, params):
            raise KeyError(f"the .cu defines no kernel {kernel!r}")

    def run(self, plan, buffers):
        for launch in plan.launches:
            self.launch(launch, buffers)


class SanitizedReplay:
    """The same launches, run by the sanitized replay executable in a child
    process; any ThreadSanitizer or alignment report fails the run."""

    def __init__(self, path, timeout=600):
        self.path = path
        self.timeout = timeout

    def run(self, plan, buffers):
        with tempfile.TemporaryDirectory() as tmp:
            lines = []
            for name, array in buffers.items():
                offset = (array.ctypes.data % 64) // 4
                path = Path(tmp, name)
                np.ascontiguousarray(array, np.float32).tofile(path)
                lines.append(f"buffer {name} {array.size} {offset} {path}")
            for launch in plan.launches:
                words = [launch.kernel, *map(str, launch.grid[:3]), str(launch.block[0])]
                for arg in launch.args:
                    words.append(_replay_word(arg))
                lines.append("launch " + " ".join(words))
            for name in buffers:
                lines.append(f"dump {name} {Path(tmp, name + '.out')}")
            env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1")
            result = subprocess.run([str(self.path)], input="\n".join(lines) + "\n", capture_output=True,
                                    text=True, timeout=self.timeout, env=env)
            if result.returncode or "WARNING: ThreadSanitizer" in result.stderr or "runtime error" in result.stderr:
                raise AssertionError(f"sanitized emulation failed (exit {result.returncode}):\n{result.stderr}")
            for name, array in buffers.items():
                array[...] = np.fromfile(Path(tmp, name + ".out"), np.float32).reshape(array.shape)


def _replay_word(arg):
    if isinstance(arg, str):
        return f"buf:{arg}"
    if isinstance(arg, np.float32):
        return f"f32:{int(arg.view(np.uint32))}"
    kind = {np.uint32: "u32", np.int32: "i32", np.uint64: "u64"}[type(arg)]
    return f"{kind}:{int(arg)}"


_loaded = {}


def build(sanitize=False, drop_syncthreads=False):
    """Kernels to run plans with: EmulatedKernels (in process, via ctypes),
    or SanitizedReplay (ThreadSanitizer, in a child process). Built once."""
    key = (sanitize, drop_syncthreads)
    if key not in _loaded:
        _loaded[key] = SanitizedReplay(sanitized_replay_path(drop_syncthreads)) if sanitize else \
            EmulatedKernels(library_path())
    return _loaded[key]


def aligned_empty(count, offset_floats=0):
    """float32 array of `count` elements starting `offset_floats` floats past a
    64-byte boundary (to test misaligned data)."""
    raw = np.empty(count + offset_floats + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4 + offset_floats
    return raw[start:start + count]


def group_norm(kernels, x, num_groups, weight=None, bias=None, eps=1e-5, *, activation=None,
               channels_last=False, chunk_elements=cuda_plan.CHUNK_ELEMENTS, x_offset=0, y_offset=0,
               assume_aligned=False):
    """What gncpu.cuda.group_norm computes on a GPU, computed by the emulated
    kernels. x_offset / y_offset (in floats) place the input / output copy
    off a 16-byte boundary, to exercise the scalar kernels. assume_aligned
    plans as if they were aligned (a negative control for the sanitizer)."""
    x = np.asarray(x, dtype=np.float32)
    x_dev = aligned_empty(x.size, x_offset).reshape(x.shape)
    x_dev[...] = x
    y_dev = aligned_empty(x.size, y_offset).reshape(x.shape)
    y_dev[...] = np.nan  # anything the kernels fail to write shows up
    _, channels, _ = cuda_plan.flatten_shape(x.shape, channels_last)
    plan = cuda_plan.plan_for_arrays(x.shape, num_groups, eps=eps, channels_last=channels_last,
                                     silu=activation == "silu",
                                     x_address=0 if assume_aligned else x_dev.ctypes.data,
                                     y_address=0 if assume_aligned else y_dev.ctypes.data,
                                     chunk_elements=chunk_elements)
    buffers = {
        cuda_plan.X: x_dev,
        cuda_plan.Y: y_dev,
        cuda_plan.WEIGHT: np.ones(channels, np.float32) if weight is None else np.asarray(weight, np.float32),
        cuda_plan.BIAS: np.zeros(channels, np.float32) if bias is None else np.asarray(bias, np.float32),
        cuda_plan.PARTIALS: np.full(max(plan.partials_floats, 1), np.nan, np.float32),
        cuda_plan.COEFFS: aligned_empty(max(plan.coeffs_floats, 4)),
    }
    buffers[cuda_plan.COEFFS][...] = np.nan
    kernels.run(plan, buffers)
    return y_dev.copy(), plan


if __name__ == "__main__":  # build both artefacts (warms the cache) and list the kernels
    build(sanitize=True)
    kernels = build()
    for name in kernels.kernel_names():
        print(name, kernels.signature(name))
