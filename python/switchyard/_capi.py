"""ctypes bindings of runtime/include/switchyard/switchyard.h (kept in step with its
SY_API_VERSION), and the error model: a failed call raises the exception of its status code
with the library's message."""
import ctypes
import os
import pathlib
import warnings

API_VERSION = 2


class SwitchyardError(RuntimeError):
    """SY_ERR_RUNTIME: an internal failure."""


class ConfigError(SwitchyardError, ValueError):
    """SY_ERR_CONFIG: a bad YAML key or value (the message names it)."""


class InputError(SwitchyardError, ValueError):
    """SY_ERR_INPUT: bad shapes, tensors, files or arguments (the message names them)."""


class TransportError(SwitchyardError, ConnectionError):
    """SY_ERR_TRANSPORT: a dead or silent peer, a timeout (the message names the peer)."""


_ERRORS = {1: SwitchyardError, 2: ConfigError, 3: InputError, 4: TransportError}


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_float)), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("ndim", ctypes.c_int32)]


class ModelOptions(ctypes.Structure):
    _fields_ = [("coordinator", ctypes.c_char_p), ("client_name", ctypes.c_char_p),
                ("use_loaded_model", ctypes.c_int), ("serving", ctypes.c_int), ("backend", ctypes.c_char_p)]


class ModelInfo(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int32), ("stages", ctypes.c_int32), ("hidden_size", ctypes.c_int64),
                ("needs_importance", ctypes.c_int32), ("experts_local", ctypes.c_int32)]


class StageStats(ctypes.Structure):
    _fields_ = [("tokens", ctypes.c_int64), ("experts", ctypes.c_int64), ("assignments", ctypes.c_int64),
                ("dropped", ctypes.c_int64), ("mean_k", ctypes.c_double), ("load_balance_loss", ctypes.c_double),
                ("z_loss", ctypes.c_double), ("k", ctypes.POINTER(ctypes.c_int32)),
                ("k_histogram", ctypes.POINTER(ctypes.c_int64)), ("expert_rows", ctypes.POINTER(ctypes.c_int64))]


class AdamW(ctypes.Structure):
    _fields_ = [("lr", ctypes.c_double), ("beta1", ctypes.c_double), ("beta2", ctypes.c_double),
                ("eps", ctypes.c_double), ("weight_decay", ctypes.c_double)]


def library_path():
    """Where libswitchyard.so is loaded from."""
    env = os.environ.get("SWITCHYARD_LIB")
    if env:
        return env
    here = pathlib.Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "build" / "libswitchyard.so", here / "libswitchyard.so",
                      pathlib.Path("/usr/local/lib/libswitchyard.so")):
        if candidate.exists():
            return str(candidate)
    raise SwitchyardError("libswitchyard.so not found: build it (`make build`) or set SWITCHYARD_LIB")


_P = ctypes.c_void_p
_T = ctypes.POINTER(Tensor)
_SIGNATURES = {
    "sy_api_version": (ctypes.c_int, []),
    "sy_last_error": (ctypes.c_char_p, []),
    "sy_blas_core": (ctypes.c_char_p, []),
    "sy_tensors_create": (ctypes.c_int, [ctypes.POINTER(_P)]),
    "sy_tensors_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "sy_tensors_save": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "sy_tensors_init": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint64, ctypes.POINTER(_P)]),
    "sy_tensors_borrow": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64),
                                         ctypes.c_int32]),
    "sy_tensors_count": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_size_t)]),
    "sy_tensors_name": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p)]),
    "sy_tensors_get": (ctypes.c_int, [_P, ctypes.c_char_p, _T]),
    "sy_tensors_destroy": (None, [_P]),
    "sy_npy_save": (ctypes.c_int, [ctypes.c_char_p, _T]),
    "sy_npy_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(_P)]),
    "sy_model_create": (ctypes.c_int, [ctypes.c_char_p, _P, ctypes.POINTER(ModelOptions), ctypes.POINTER(_P)]),
    "sy_model_destroy": (None, [_P]),
    "sy_model_get_info": (ctypes.c_int, [_P, ctypes.POINTER(ModelInfo)]),
    "sy_model_forward": (ctypes.c_int, [_P, ctypes.c_int32, _T, _T, _T, _T]),
    "sy_model_backward": (ctypes.c_int, [_P, ctypes.c_int32, _T, _T, ctypes.c_double, _P]),
    "sy_model_aux_loss": (ctypes.c_int, [_P, ctypes.c_int32, ctypes.POINTER(ctypes.c_double)]),
    "sy_model_stage_stats": (ctypes.c_int, [_P, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(StageStats)]),
    "sy_model_weight": (ctypes.c_int, [_P, ctypes.c_char_p, _T]),
    "sy_model_grad": (ctypes.c_int, [_P, ctypes.c_char_p, _T]),
    "sy_model_zero_grads": (ctypes.c_int, [_P]),
    "sy_model_rebind": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_void_p]),
    "sy_adamw_defaults": (AdamW, []),
    "sy_model_step": (ctypes.c_int, [_P, ctypes.POINTER(AdamW), ctypes.c_int32]),
    "sy_model_step_experts": (ctypes.c_int, [_P, ctypes.POINTER(AdamW), ctypes.c_int32]),
    "sy_model_set_drop_top_experts": (ctypes.c_int, [_P, ctypes.c_int32]),
    "sy_model_save_checkpoint": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "sy_model_restore_checkpoint": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "sy_model_fetch_expert_grads": (ctypes.c_int, [_P, ctypes.POINTER(_P)]),
}

_lib = None


def lib():
    """The loaded library, its signatures declared and its version checked."""
    global _lib
    if _lib is None:
        handle = ctypes.CDLL(library_path())
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(handle, name)
            fn.restype, fn.argtypes = restype, argtypes
        if handle.sy_api_version() != API_VERSION:
            raise SwitchyardError(f"{library_path()} has C API version {handle.sy_api_version()}, "
                                  f"this package speaks {API_VERSION}")
        _lib = handle
        _warn_generic_blas(handle.sy_blas_core().decode())
    return _lib


def _warn_generic_blas(core):
    """OpenBLAS falls back to its generic kernels on CPUs it does not recognise (some VMs)."""
    if core != "Prescott" or os.environ.get("OPENBLAS_CORETYPE"):
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return
    better = "SkylakeX" if {"avx512f", "avx512bw", "avx512vl"} <= set(flags) else "Haswell" if "avx2" in flags else None
    if better:
        warnings.warn(f"switchyard: OpenBLAS runs its generic Prescott kernels on a CPU with "
                      f"{'AVX-512' if better == 'SkylakeX' else 'AVX2'}; set OPENBLAS_CORETYPE={better} before "
                      "starting Python (GEMMs ran 3.4x faster here)", RuntimeWarning, stacklevel=3)


def check(status):
    """Raises the exception of a failed call's status with the library's message."""
    if status != 0:
        message = lib().sy_last_error().decode("utf-8", "replace")
        raise _ERRORS.get(status, SwitchyardError)(message)


def call(name, *args):
    check(getattr(lib(), name)(*args))
