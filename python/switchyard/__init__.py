"""Switchyard from Python: the C API (libswitchyard.so) through ctypes, and a PyTorch module.

    import switchyard.torch as syt
    layer = syt.MoELayer.topk(hidden_size=256, num_experts=8, k=2, ffn_hidden_size=512)

The library is found at $SWITCHYARD_LIB, then next to this package in a build tree
(../../build/libswitchyard.so), then where `make install` puts it.
"""
from ._capi import (  # noqa: F401
    API_VERSION,
    ConfigError,
    InputError,
    SwitchyardError,
    TransportError,
    library_path,
)

__all__ = ["API_VERSION", "ConfigError", "InputError", "SwitchyardError", "TransportError", "library_path"]
