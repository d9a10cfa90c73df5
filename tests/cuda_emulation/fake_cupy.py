"""A stand-in for the few CuPy names gncpu's CUDA launcher uses, backed by
NumPy and the emulated kernels, so the launcher's own code (array
conversion, layout detection, out= handling, float16, module loading and
the kernel calls) runs end to end on a machine without a GPU.

    fake = FakeCuPy(driver.build())
    monkeypatch.setitem(sys.modules, "cupy", fake)

"Device" arrays are NumPy arrays of the subclass FakeArray, which answers
`.data.ptr` and `.device` like a cupy.ndarray. Only what the launcher calls
is provided: a new call to CuPy in the launcher fails here loudly
(AttributeError) instead of passing untested.
"""
import contextlib
import types

import numpy as np


class FakeArray(np.ndarray):
    """A NumPy array that looks like a cupy.ndarray to the launcher."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    @property
    def device(self):
        return contextlib.nullcontext()


def _fake(array):
    return np.asarray(array).view(FakeArray)


class FakeRawModule:
    """Records how the launcher builds its module; get_function returns a
    callable that runs the emulated kernel, checking argument types."""

    instances = []

    def __init__(self, kernels, code, options=(), backend="nvrtc"):
        self.kernels, self.code, self.options, self.backend = kernels, code, options, backend
        self.functions_asked = []
        FakeRawModule.instances.append(self)

    def get_function(self, name):
        self.functions_asked.append(name)
        self.kernels.signature(name)  # KeyError for a name the .cu does not define

        def call(grid, block, args):
            for arg in args:
                if isinstance(arg, np.ndarray) and not isinstance(arg, FakeArray):
                    raise TypeError(f"{name}: a host array was passed to a kernel")
            self.kernels.launch_raw(name, grid, block, args)

        return call


class FakeCuPy(types.ModuleType):
    float16 = np.float16
    float32 = np.float32
    float64 = np.float64
    ndarray = FakeArray

    def __init__(self, kernels):
        super().__init__("cupy")
        self.kernels = kernels
        self.calls = []
        self.cuda = types.SimpleNamespace(
            Device=lambda *a: types.SimpleNamespace(id=0),
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        )

    def RawModule(self, code, options=(), backend="nvrtc"):
        return FakeRawModule(self.kernels, code, options, backend)

    def asarray(self, a, dtype=None):
        if isinstance(a, FakeArray) and (dtype is None or a.dtype == dtype):
            return a
        return _fake(np.asarray(a, dtype=dtype))

    def from_dlpack(self, obj):
        return _fake(np.from_dlpack(obj))

    def ascontiguousarray(self, a, dtype=None):
        if isinstance(a, FakeArray) and a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
            return a
        self.calls.append("copy")
        return _fake(np.ascontiguousarray(a, dtype=dtype))

    def moveaxis(self, a, source, destination):
        return np.moveaxis(a, source, destination)

    def empty(self, shape, dtype=np.float32):
        return _fake(np.full(shape, np.nan, dtype))  # NaN: unwritten outputs show

    def ones(self, shape, dtype=np.float32):
        return _fake(np.ones(shape, dtype))

    def zeros(self, shape, dtype=np.float32):
        return _fake(np.zeros(shape, dtype))
