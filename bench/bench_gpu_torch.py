#!/usr/bin/python3
"""One top-k MoE layer forward on the GPU: Switchyard's CUDA backend ops against PyTorch eager.

  ours   `bench_gpu layer` (C++): router linear, softmax, gather, one swiglu FFN per expert and the
         weighted sum as CUDA backend ops; top-k, gates and the dispatch layout on the HOST (the
         router probabilities are copied to the host and the row index back, inside the step)
  eager  a plain PyTorch MoE layer on the same GPU, same shape: router F.linear, softmax, topk,
         renormalised gates, a Mixtral-style loop over experts (torch.where, index_select, F.linear,
         silu, index_add_), under torch.no_grad, FP32 with TF32 off

Both forward only, each step ending with the device idle, medians of --reps after warm-up
(torch: CUDA events around each step, then synchronize). Two shapes: `large` (the headline,
GEMM-bound) and `small` (per-expert overhead shows). Prints, per shape, the two times and
gpu_layer_vs_torch_eager = torch ms / ours ms (target >= 2); the headline lines only when both were
measured. Without CUDA PyTorch or a CUDA device it says so and exits 0.

    python3 bench/bench_gpu_torch.py [--bench-gpu build/bench/bench_gpu] [--reps N] [--shapes large,small]

SY_BENCH_GPU_LD_LIBRARY_PATH, when set, is the LD_LIBRARY_PATH given to bench_gpu alone (the
device check's bundle), so that this interpreter's PyTorch keeps its own libraries.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

from eager_moe import eager_moe  # bench/, the directory of this script

SHAPES = {
    "large": dict(E=16, k=2, d=1024, f=2816, T=4096),
    "small": dict(E=8, k=2, d=256, f=512, T=1024),
}


def torch_ms(shape, reps, warmup):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    g = torch.Generator(device="cuda").manual_seed(2)
    dev = "cuda"
    E, k, d, f, T = shape["E"], shape["k"], shape["d"], shape["f"], shape["T"]

    def uniform(*size, scale):
        return (torch.rand(*size, device=dev, generator=g) * 2 - 1) * scale

    x = uniform(T, d, scale=1.0)
    router = uniform(E, d, scale=0.05)
    experts = [(uniform(f, d, scale=0.05), uniform(f, d, scale=0.05), uniform(d, f, scale=0.05)) for _ in range(E)]
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.no_grad():
        for i in range(warmup + reps):
            torch.cuda.synchronize()
            start.record()
            eager_moe(x, router, experts, k)
            stop.record()
            stop.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(stop))
    return statistics.median(times)


def ours_ms(binary, shape, reps, warmup):
    """Runs bench_gpu layer; returns (ms or None, its output)."""
    cmd = [binary, "layer", "--experts", str(shape["E"]), "--k", str(shape["k"]), "--d", str(shape["d"]),
           "--f", str(shape["f"]), "--tokens", str(shape["T"]), "--reps", str(reps), "--warmup", str(warmup)]
    env = dict(os.environ)
    if "SY_BENCH_GPU_LD_LIBRARY_PATH" in env:  # the binary's libraries, not this interpreter's
        env["LD_LIBRARY_PATH"] = env["SY_BENCH_GPU_LD_LIBRARY_PATH"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{out}")
    m = re.search(r"^gpu_layer_ms: ([0-9.]+)$", p.stdout, re.M)
    return (float(m.group(1)) if m else None), out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-gpu", default=os.path.join(here, "..", "build", "bench", "bench_gpu"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--shapes", default="large,small")
    a = ap.parse_args()
    shapes = [s for s in a.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            sys.exit(f"bench_gpu_torch: unknown shape {s} (known: {', '.join(SHAPES)})")

    try:
        import torch
    except ImportError as e:
        print(f"gpu_layer_vs_torch_eager: not measured (no PyTorch: {e})")
        return 0
    if not torch.cuda.is_available():
        print(f"gpu_layer_vs_torch_eager: not measured (PyTorch {torch.__version__} has no usable CUDA device: "
              "CPU-only build or no GPU): skipped")
        return 0
    if not os.access(a.bench_gpu, os.X_OK):
        print(f"gpu_layer_vs_torch_eager: not measured ({a.bench_gpu} is missing: a CUDA build has bench/bench_gpu)")
        return 0
    print(f"gpu: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")

    for name in shapes:
        shape = SHAPES[name]
        desc = ", ".join(f"{k}={v}" for k, v in shape.items())
        ours, out = ours_ms(a.bench_gpu, shape, a.reps, a.warmup)
        for line in out.splitlines():
            if line.startswith(("layer", "gpu:", "bench_gpu")):
                print(f"  {line}")
        if ours is None:
            print(f"layer {name} ({desc}): ours not measured (bench_gpu printed no gpu_layer_ms)")
            continue
        eager = torch_ms(shape, a.reps, a.warmup)
        suffix = "" if name == "large" else f"_{name}"
        ratio = eager / ours
        print(f"layer {name} ({desc}), forward: ours {ours:.3f} ms, PyTorch eager {eager:.3f} ms; "
              f"ratio {ratio:.2f} (target >= 2: {'met' if ratio >= 2 else 'NOT met'})")
        print(f"gpu_layer_ms{suffix}: {ours:.3f}")
        print(f"torch_eager_layer_ms{suffix}: {eager:.3f}")
        print(f"gpu_layer_vs_torch_eager{suffix}: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
