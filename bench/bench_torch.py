#!/usr/bin/python3
"""The PyTorch module against its peers, in one process, same threads: forward + backward of
  module   switchyard.torch.MoELayer under autograd (what a PyTorch user runs)
  eager    a plain PyTorch MoE layer of the same shape and weights: router, softmax, top-k,
           renormalised gates, a Mixtral-style loop over experts (index_select, swiglu FFN,
           index_add_), autograd
  engine   the same Switchyard model through the C API alone (ctypes calls on preallocated
           buffers, the model's own gradient buffers, no autograd): the C++ engine's step
at a small shape where per-expert overhead shows and a large GEMM-bound one. Medians, the three
timed in turn within each round.

    python3 bench/bench_torch.py [--reps N] [--threads T]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import torch  # noqa: E402

from switchyard import _capi  # noqa: E402
from switchyard.torch import MoELayer, _View  # noqa: E402

from eager_moe import eager_moe  # noqa: E402  (bench/, the directory of this script)

SHAPES = {"small": dict(E=8, k=2, d=256, f=512, T=1024), "large": dict(E=16, k=2, d=1024, f=2048, T=4096)}


def median_ms(fns, reps):
    """Median ms of each function, timed round-robin (one call of each per round) so that the
    shared machine's slow phases fall on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def bench_shape(name, E, k, d, f, T, reps):
    layer = MoELayer.topk(hidden_size=d, num_experts=E, k=k, ffn_hidden_size=f, load_balance=0.0, seed=1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, d, generator=gen)
    g = torch.randn(T, d, generator=gen)
    p = dict(layer.named_parameters())
    router = p["stages.0.router.weight"].detach().clone().requires_grad_(True)
    experts = [tuple(p[f"stages.0.experts.{e}.{w}_proj.weight"].detach().clone().requires_grad_(True)
                     for w in ("gate", "up", "down")) for e in range(E)]

    def module_step():
        xi = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        ((layer(xi) * g).sum() + layer.aux_loss).backward()

    def eager_step():
        xi = x.clone().requires_grad_(True)
        for t in [router, *[w for e in experts for w in e]]:
            t.grad = None
        (eager_moe(xi, router, experts, k) * g).sum().backward()

    model = layer._model
    y, gx = torch.empty_like(x), torch.empty_like(x)
    xv, yv, gv, gxv = _View(x), _View(y), _View(g), _View(gx)

    def engine_step():
        _capi.call("sy_model_zero_grads", model.handle)
        _capi.call("sy_model_forward", model.handle, 0, xv.ref, yv.ref, None, None)
        _capi.call("sy_model_backward", model.handle, 0, gv.ref, gxv.ref, 1.0, None)

    # Same numbers first: the module and the plain layer agree (float round-off).
    with torch.no_grad():
        diff = (layer(x) - eager_moe(x, router, experts, k)).abs().max().item()
    ms = median_ms({"module": module_step, "eager": eager_step, "engine": engine_step}, reps)
    print(f"{name}: E={E} k={k} d={d} f={f} T={T}: module {ms['module']:.2f} ms, eager {ms['eager']:.2f} ms, "
          f"engine (C API) {ms['engine']:.2f} ms per forward+backward (median of {reps}); "
          f"max |module - eager| = {diff:.2e}", flush=True)
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    small = bench_shape("small", reps=args.reps, **SHAPES["small"])
    large = bench_shape("large", reps=max(3, args.reps // 4), **SHAPES["large"])
    print(f"torch_module_vs_eager: {small['eager'] / small['module']:.3f}")
    print(f"torch_module_vs_eager_large: {large['eager'] / large['module']:.3f}")
    print(f"torch_module_overhead: {small['module'] / small['engine']:.3f}")
    print(f"torch_module_overhead_large: {large['module'] / large['engine']:.3f}")


if __name__ == "__main__":
    main()
