"""float32 .npy files through the library's reader and writer (core/io: what the `switchyard`
CLI reads and writes; Debian's python3-torch comes without numpy)."""
import ctypes
import os

from . import _capi


def save(path, tensor):
    from .torch import _require_cpu_f32, _View
    view = _View(_require_cpu_f32(tensor.detach(), "tensor"))
    _capi.call("sy_npy_save", os.fspath(path).encode(), view.ref)


def load(path):
    from .torch import _TensorMap
    handle = ctypes.c_void_p()
    _capi.call("sy_npy_load", os.fspath(path).encode(), ctypes.byref(handle))
    return _TensorMap(handle).to_dict()["array"]
