"""Native op implementations, one module per family; each registers its ops
with gncpu.onnx.registry on import. `load_all()` imports every module here, so
a new file is picked up without editing a list."""
import importlib
import pkgutil


def load_all() -> list:
    """Import every op module in this package; returns their names."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
        names.append(info.name)
    return names
