"""The compiled kernels, one build per instruction-set level.

`kernels` is the module for the best level this CPU supports; set
GNCPU_KERNEL=baseline|avx2|avx512 to force one (tests run every variant).
"""
import importlib
import os

# libgomp's idle workers spin GOMP_SPINCOUNT iterations before they sleep: by default
# 300,000, about 9 ms of a core after every multi-threaded call (measured on a 2-vCPU
# AMD EPYC VM). In a model that core is taken from whatever runs next, usually an
# onnxruntime or torch convolution on its own threads. Unless the user chose a wait
# policy, load libgomp with 10,000 (~0.3 ms): back-to-back calls still find the team
# spinning. libgomp reads the variable once, when it is loaded (here, with the first
# kernel module), so it is set only around that load and then removed again: neither
# child processes nor a torch imported later see it. If libgomp was already loaded by
# another module, its setting stands (show_config() says which applies).
SPIN_COUNT = 10_000
_spin_env = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "libgomp.so" in maps.read()
    except OSError:
        return False


if _spin_env:
    _spin_env = not _libgomp_loaded()
if _spin_env:
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
try:
    from . import _baseline
except ImportError as exc:  # the source tree without its compiled kernels
    raise ImportError(
        f"gncpu's compiled kernels are missing from {__path__[0]}: this looks like the "
        "source tree, not an installed gncpu. Run from another directory (or use the "
        "`gncpu` command), or build in place: python setup.py build_ext --inplace") from exc
finally:
    if _spin_env:
        del os.environ["GOMP_SPINCOUNT"]


def omp_spin_setting() -> str:
    """How libgomp's idle workers wait, as this import left it (for show_config)."""
    if _spin_env:
        return f"GOMP_SPINCOUNT={SPIN_COUNT} (set by gncpu at load; ~0.3 ms of spinning)"
    chosen = [f"{name}={os.environ[name]}" for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if name in os.environ]
    if chosen:
        return ", ".join(chosen) + " (the user's)"
    return "libgomp's default (it was loaded before gncpu)"

LEVELS = ("baseline", "avx2", "avx512")


def available_variants():
    """Variants that were compiled and that this CPU can run, slowest first."""
    found = []
    for level, name in enumerate(LEVELS):
        if level > _baseline.cpu_level():
            break
        try:
            found.append((name, importlib.import_module(f"{__name__}._{name}")))
        except ImportError:  # not built on this platform (e.g. non-x86)
            pass
    return found


def _select():
    variants = dict(available_variants())
    wanted = os.environ.get("GNCPU_KERNEL")
    if wanted:
        if wanted not in variants:
            raise ImportError(f"GNCPU_KERNEL={wanted!r}: available variants on this CPU are {sorted(variants)}")
        return variants[wanted]
    return list(variants.values())[-1]


kernels = _select()
