"""Switchyard MoE layers as torch.nn.Modules, over the C API (libswitchyard.so).

    layer = MoELayer(config)                         # config: YAML text, a YAML file or a dict
    layer = MoELayer.topk(hidden_size=256, num_experts=8, k=2, ffn_hidden_size=512)
    y = layer(x)                                     # x [T, d] or [B, L, d], float32, CPU
    loss = task_loss(y) + layer.aux_loss             # aux_loss carries gradient
    layer.stats                                      # per stage: K_t per token, rows per expert

Dense parameters (router, norms, DAG, shared expert, coefficient) are nn.Parameters named as
METHODS.md §5, so `state_dict()` round-trips with the safetensors weight files; the C engine
reads them in place (no copies), so any torch optimizer trains them. Local experts are
parameters too. With `cluster="host:port"` the experts live on the cluster's workers:
`layer.step_experts(lr=...)` runs their AdamW there, once per optimizer step.

Dynamic stages (DA-MoE) take token importance from the attention probabilities of the
preceding attention module, `layer(x, attention=A)` with A [B, H, L, L] (B·L = T), or
directly, `importance=[T] or [B, L]`.

The engine keeps the activations of the last forward of each layer: call backward before the
same layer's next forward (no activation checkpointing).

`backend="cuda"` (local experts only) runs the engine on the CUDA device cuda:0: the parameters
are CUDA tensors the engine reads in place, inputs, outputs and gradients are CUDA tensors
handed to it by pointer (no host copies); only the initial weights go to the device once.
Each call synchronizes torch's stream before it (the engine runs on a stream of its own) and
returns when the engine's device work is done.
"""
import ctypes
import json
import os

import torch
from torch import nn

from . import _capi
from ._capi import InputError

__all__ = ["MoELayer", "MoEModel", "InputError", "load_weights", "save_weights"]


# ---------------------------------------------------------------- tensors across the boundary

class _View:
    """A torch tensor as a sy_tensor (the shape array kept alive with it)."""

    def __init__(self, t):
        self.shape = (ctypes.c_int64 * t.dim())(*t.shape)
        self.struct = _capi.Tensor(ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float)), self.shape, t.dim())

    @property
    def ref(self):
        return ctypes.byref(self.struct)


def _require_f32(t, what, device="cpu"):
    """t as a contiguous float32 tensor on `device` ("cpu", or "cuda": cuda:0), or an error."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{what} has dtype {t.dtype}; Switchyard layers take torch.float32")
    if t.device.type != device or (device == "cuda" and (t.device.index or 0) != 0):
        where = "the CPU" if device == "cpu" else "cuda:0"
        raise ValueError(f"{what} is on {t.device}; this Switchyard layer (backend '{device}') runs on {where}")
    return t if t.is_contiguous() else t.contiguous()


def _require_cpu_f32(t, what):
    return _require_f32(t, what, "cpu")


def _sync(device):
    """Torch's pending work on the inputs is done before the engine (its own stream) reads them."""
    if device == "cuda":
        torch.cuda.synchronize()


def _copy_array(ptr, n, dtype, ctype):
    """An owning torch copy of n C values."""
    t = torch.empty(n, dtype=dtype)
    if n:
        ctypes.memmove(t.data_ptr(), ptr, n * ctypes.sizeof(ctype))
    return t


def _to_torch(view):
    """An owning torch copy of a sy_tensor."""
    shape = [view.shape[i] for i in range(view.ndim)]
    out = torch.empty(shape, dtype=torch.float32)
    if out.numel():
        ctypes.memmove(out.data_ptr(), view.data, out.numel() * 4)
    return out


class _TensorMap:
    """An owned sy_tensors handle."""

    def __init__(self, handle=None):
        if handle is None:
            handle = ctypes.c_void_p()
            _capi.call("sy_tensors_create", ctypes.byref(handle))
        self.handle = handle
        self._keep = []

    @classmethod
    def init(cls, config_text, seed):
        h = ctypes.c_void_p()
        _capi.call("sy_tensors_init", config_text.encode(), seed, ctypes.byref(h))
        return cls(h)

    @classmethod
    def load(cls, path):
        h = ctypes.c_void_p()
        _capi.call("sy_tensors_load", os.fspath(path).encode(), ctypes.byref(h))
        return cls(h)

    def borrow(self, name, t):
        v = _View(t)
        self._keep.append((v, t))
        _capi.call("sy_tensors_borrow", self.handle, name.encode(), t.data_ptr(), v.shape, t.dim())

    def to_dict(self):
        count = ctypes.c_size_t()
        _capi.call("sy_tensors_count", self.handle, ctypes.byref(count))
        out = {}
        for i in range(count.value):
            name = ctypes.c_char_p()
            _capi.call("sy_tensors_name", self.handle, i, ctypes.byref(name))
            view = _capi.Tensor()
            _capi.call("sy_tensors_get", self.handle, name.value, ctypes.byref(view))
            out[name.value.decode()] = _to_torch(view)
        return out

    def __del__(self):
        if getattr(self, "handle", None) and _capi._lib is not None:
            _capi._lib.sy_tensors_destroy(self.handle)
            self.handle = None


def load_weights(path):
    """A safetensors weight file as a dict of float32 tensors."""
    return _TensorMap.load(path).to_dict()


def save_weights(tensors, path):
    """Writes a dict of tensors (e.g. a state_dict) as a safetensors file the CLI reads."""
    m = _TensorMap()
    for k, v in tensors.items():
        m.borrow(k, _require_cpu_f32(v.detach(), f"tensor '{k}'"))
    _capi.call("sy_tensors_save", m.handle, os.fspath(path).encode())


def _config_text(config):
    """YAML text from YAML text, a path to a YAML file, or a dict (JSON is YAML)."""
    if isinstance(config, dict):
        return json.dumps(config)
    if isinstance(config, os.PathLike) or (isinstance(config, str) and "\n" not in config and
                                          config.endswith((".yaml", ".yml"))):
        with open(config, encoding="utf-8") as f:
            return f.read()
    if isinstance(config, str):
        return config
    raise TypeError(f"config must be YAML text, a YAML file path or a dict, got {type(config).__name__}")


def _is_expert(name):
    return ".experts." in name


# ---------------------------------------------------------------- the model handle

class _Model:
    """A sy_model and the torch parameters it reads in place."""

    def __init__(self, config, cluster, weights, seed, name, use_loaded_model, serving, backend="cpu"):
        if backend not in ("cpu", "cuda"):
            raise InputError(f"backend '{backend}': expected 'cpu' or 'cuda'")
        if backend == "cuda" and cluster:
            raise InputError("backend 'cuda' with a cluster: attached layers run on the cpu")
        if backend == "cuda" and not torch.cuda.is_available():
            raise InputError("backend 'cuda': torch sees no CUDA device here")
        self.device = backend
        self.config_text = _config_text(config)
        if weights is None:
            full = _TensorMap.init(self.config_text, seed).to_dict()
        elif isinstance(weights, (str, os.PathLike)):
            full = _TensorMap.load(weights).to_dict()
        elif isinstance(weights, dict):
            full = {k: _require_cpu_f32(v.detach(), f"weights['{k}']").clone() for k, v in weights.items()}
        else:
            raise TypeError("weights must be None, a safetensors path or a dict of tensors")
        self.attached = bool(cluster)
        # The parameters this process holds: all, or the dense ones when experts are on workers.
        self.params = {k: nn.Parameter(v.to(backend) if backend != "cpu" else v) for k, v in full.items()
                       if not (self.attached and _is_expert(k))}
        create_map = _TensorMap()
        for k, v in full.items():
            create_map.borrow(k, self.params[k].data if k in self.params else v)
        opts = _capi.ModelOptions(cluster.encode() if cluster else None, (name or "switchyard.torch").encode(),
                                  1 if use_loaded_model else 0, 1 if serving else 0, backend.encode())
        self.handle = ctypes.c_void_p()
        _capi.call("sy_model_create", self.config_text.encode(), create_map.handle, ctypes.byref(opts),
                   ctypes.byref(self.handle))
        self.bound = {k: p.data_ptr() for k, p in self.params.items()}
        info = _capi.ModelInfo()
        _capi.call("sy_model_get_info", self.handle, ctypes.byref(info))
        self.info = info
        self.versions = [0] * info.layers

    def prefix(self, layer):
        return f"layers.{layer}." if self.info.layers > 1 else ""

    def layer_params(self, layer):
        p = self.prefix(layer)
        return [(k, v) for k, v in self.params.items() if k.startswith(p) and (p or not k.startswith("layers."))]

    def bind(self):
        """Re-points the engine at parameters torch moved (e.g. `.data = ...`)."""
        for k, p in self.params.items():
            if p.data_ptr() != self.bound[k]:
                data = _require_f32(p.data, f"parameter '{k}'", self.device)
                if data.data_ptr() != p.data_ptr():
                    p.data = data
                _capi.call("sy_model_rebind", self.handle, k.encode(), p.data_ptr())
                self.bound[k] = p.data_ptr()

    def stage_stats(self, layer):
        out = []
        for s in range(self.info.stages):
            st = _capi.StageStats()
            _capi.call("sy_model_stage_stats", self.handle, layer, s, ctypes.byref(st))
            out.append({
                "tokens": st.tokens, "assignments": st.assignments, "dropped": st.dropped, "mean_k": st.mean_k,
                "load_balance_loss": st.load_balance_loss, "z_loss": st.z_loss,
                "k": _copy_array(st.k, st.tokens, torch.int32, ctypes.c_int32),
                "k_histogram": _copy_array(st.k_histogram, st.experts + 1, torch.int64, ctypes.c_int64),
                "expert_rows": _copy_array(st.expert_rows, st.experts, torch.int64, ctypes.c_int64),
            })
        return out

    def set_drop_top_experts(self, n):
        _capi.call("sy_model_set_drop_top_experts", self.handle, n)

    def checkpoint(self, directory, restore=False):
        name = "sy_model_restore_checkpoint" if restore else "sy_model_save_checkpoint"
        _capi.call(name, self.handle, os.fspath(directory).encode())

    def step_experts(self, lr, betas, eps, weight_decay, group_size):
        adam = _capi.AdamW(lr, betas[0], betas[1], eps, weight_decay)
        _capi.call("sy_model_step_experts", self.handle, ctypes.byref(adam), group_size)

    def __del__(self):
        if getattr(self, "handle", None) and _capi._lib is not None:
            _capi._lib.sy_model_destroy(self.handle)
            self.handle = None


class _LayerFunction(torch.autograd.Function):
    """One Switchyard layer: forward and backward in the C engine; params are inputs so that
    autograd hands their gradients to torch."""

    @staticmethod
    def forward(ctx, model, layer, names, x, attention, importance, *params):
        model.bind()
        _sync(model.device)
        y = torch.empty_like(x)
        xv, yv = _View(x), _View(y)
        av = _View(attention) if attention is not None else None
        iv = _View(importance) if importance is not None else None
        _capi.call("sy_model_forward", model.handle, layer, xv.ref, yv.ref, av.ref if av else None,
                   iv.ref if iv else None)
        model.versions[layer] += 1
        aux = ctypes.c_double()
        _capi.call("sy_model_aux_loss", model.handle, layer, ctypes.byref(aux))
        ctx.model, ctx.layer, ctx.names, ctx.version = model, layer, names, model.versions[layer]
        ctx.shapes = [p.shape for p in params]
        ctx.out_shape = y.shape
        return y, torch.tensor(aux.value, dtype=torch.float32, device=x.device)

    @staticmethod
    def backward(ctx, grad_y, grad_aux):
        model, layer = ctx.model, ctx.layer
        if model.versions[layer] != ctx.version:
            raise RuntimeError(f"switchyard: backward of an older forward of layer {layer}: the engine keeps the "
                               "activations of the last forward of each layer only; run backward before the "
                               "layer's next forward")
        device = model.device
        grad_y = torch.zeros(ctx.out_shape, device=device) if grad_y is None else grad_y
        grad_y = _require_f32(grad_y, "grad_output", device)
        grads = [torch.zeros(s, dtype=torch.float32, device=device) for s in ctx.shapes]
        gmap = _TensorMap()
        for name, g in zip(ctx.names, grads):
            gmap.borrow(name, g)
        grad_x = torch.empty_like(grad_y)
        gy, gx = _View(grad_y), _View(grad_x)
        scale = float(grad_aux) if grad_aux is not None else 0.0
        _sync(device)
        _capi.call("sy_model_backward", model.handle, layer, gy.ref, gx.ref, scale, gmap.handle)
        needs = ctx.needs_input_grad[6:]
        return (None, None, None, grad_x if ctx.needs_input_grad[3] else None, None, None,
                *[g if n else None for g, n in zip(grads, needs)])


def _register(module, dotted, param):
    """Registers `param` under a dotted name through plain container modules, so that
    state_dict() keys are exactly the METHODS.md §5 names."""
    *path, leaf = dotted.split(".")
    m = module
    for part in path:
        sub = m._modules.get(part)
        if sub is None:
            sub = nn.Module()
            m.add_module(part, sub)
        m = sub
    m.register_parameter(leaf, param)


# ---------------------------------------------------------------- modules

class MoELayer(nn.Module):
    """One Switchyard MoE layer (METHODS.md §3) where an FFN was.

    config    YAML text, a path to a YAML file, or a dict with a `model:` section (model.layers 1)
    cluster   None (experts in this process) or "host:port" of a Switchyard coordinator
    weights   None (initialised from `seed` as `switchyard layer init` does), a safetensors
              path, or a dict of tensors named as METHODS.md §5
    use_loaded_model   attached: use the experts another client (rank 0) loaded
    serving   attached: forward only
    backend   "cpu" (default) or "cuda": the engine on cuda:0, CUDA tensors in and out
    """

    def __init__(self, config, cluster=None, *, weights=None, seed=0, name=None, use_loaded_model=False,
                 serving=False, backend="cpu", _model=None, _layer=0):
        super().__init__()
        if _model is None:
            _model = _Model(config, cluster, weights, seed, name, use_loaded_model, serving, backend)
            if _model.info.layers != 1:
                raise InputError(f"MoELayer holds one layer; the config has model.layers: {_model.info.layers} "
                                 "(use MoEModel)")
        object.__setattr__(self, "_model", _model)  # not a submodule: shared by a model's layers
        self._layer = _layer
        prefix = _model.prefix(_layer)
        self._names = []
        for name_, p in _model.layer_params(_layer):
            _register(self, name_[len(prefix):], p)
            self._names.append(name_)
        self._plist = [p for _, p in _model.layer_params(_layer)]
        self.hidden_size = _model.info.hidden_size
        self.aux_loss = torch.zeros((), device=_model.device)
        self._stats = None

    @classmethod
    def topk(cls, hidden_size, num_experts, k, ffn_hidden_size, *, activation="swiglu", normalize=True,
             capacity_factor=0.0, load_balance=0.01, z_loss=0.0, shared_expert_ffn_hidden_size=None,
             input_norm="none", **kwargs):
        """A classic top-k layer (DeepSpeed `MoE(hidden_size, expert, num_experts, k)`, Mixtral style)."""
        stage = {"experts": num_experts, "ffn_hidden_size": ffn_hidden_size, "activation": activation,
                 "routing": {"kind": "topk", "k": k, "normalize": normalize},
                 "aggregation": {"kind": "weighted_sum"}, "capacity_factor": capacity_factor,
                 "aux_loss": {"load_balance": load_balance, "z_loss": z_loss}}
        if shared_expert_ffn_hidden_size:
            stage["shared_expert"] = {"ffn_hidden_size": shared_expert_ffn_hidden_size, "mix": "add"}
        config = {"model": {"hidden_size": hidden_size, "layer": {"input_norm": input_norm, "stages": [stage]}}}
        return cls(config, **kwargs)

    @property
    def config_text(self):
        return self._model.config_text

    @property
    def needs_importance(self):
        return bool(self._model.info.needs_importance)

    def forward(self, x, attention=None, importance=None):
        d = self.hidden_size
        device = self._model.device
        x = _require_f32(x, "MoELayer input", device)
        if x.dim() not in (2, 3) or x.shape[-1] != d:
            raise InputError(f"MoELayer input has shape {list(x.shape)}, expected [T, {d}] or [B, L, {d}] "
                             f"(hidden_size {d})")
        if attention is not None:
            attention = _require_f32(attention.detach(), "attention", device)
        if importance is not None:
            importance = _require_f32(importance.detach(), "importance", device)
        y, aux = _LayerFunction.apply(self._model, self._layer, self._names, x.reshape(-1, d), attention, importance,
                                      *self._plist)
        self.aux_loss = aux
        self._stats = None
        return y.view(x.shape)

    @property
    def stats(self):
        """Per stage of the last forward: tokens, K_t per token (`k`), `k_histogram`,
        `expert_rows` (rows each expert computed), `dropped`, `mean_k` and the aux losses."""
        if self._stats is None:
            self._stats = self._model.stage_stats(self._layer)
        return self._stats

    def step_experts(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, group_size=1):
        """AdamW on the experts the cluster's workers hold (every layer of this model), after
        backward; the dense parameters are the caller's optimizer's."""
        self._model.step_experts(lr, betas, eps, weight_decay, group_size)


class MoEModel(nn.Module):
    """`model.layers` Switchyard MoE layers sharing one engine (and one cluster attachment):
    `model.layers[n]` is a MoELayer to place in block n of a Transformer. Parameter names are
    METHODS.md §5's with "layers.{n}." prefixes, as in the weight files."""

    def __init__(self, config, cluster=None, *, weights=None, seed=0, name=None, use_loaded_model=False,
                 serving=False, backend="cpu"):
        super().__init__()
        model = _Model(config, cluster, weights, seed, name, use_loaded_model, serving, backend)
        object.__setattr__(self, "_model", model)
        self.layers = nn.ModuleList(MoELayer(None, _model=model, _layer=n) for n in range(model.info.layers))

    @property
    def experts_local(self):
        return bool(self._model.info.experts_local)

    def step_experts(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, group_size=1):
        self._model.step_experts(lr, betas, eps, weight_decay, group_size)

    def set_drop_top_experts(self, n):
        """Evaluation option: every stage of every layer drops each token's `n` best routed
        experts (as capacity drops are, gates not renormalised); 0 routes normally."""
        self._model.set_drop_top_experts(n)

    def save_expert_checkpoint(self, directory):
        """Attached: every worker writes its replicas (weights + AdamW state) to `directory`."""
        self._model.checkpoint(directory)

    def restore_expert_checkpoint(self, directory):
        self._model.checkpoint(directory, restore=True)
