#!/usr/bin/python3
"""The papers' directions at this scale: the byte-level LM of train_lm.py with each MoE method,
the same token budget, (as close as possible) the same active parameters, several seeds;
prints a markdown table (mean ± std) and, with --readme, writes it into README.md between
the `compare_methods` markers.

    python3 python/examples/compare_methods.py --seeds 3 --steps 300 --readme README.md

Pairs (METHODS.md; the papers' claims in parentheses):
  DAG-MoE (L=2)        vs weighted-sum top-2         validation perplexity (DAG lower)
  CartesianMoE         vs fine-grained top-4         perplexity, and the ratio of perplexity
    (2 stages x 8 sub-experts of half width, top-2 each, shared sub-expert; fine-grained:
    16 experts of half width, top-4, a shared expert of full width: the same routed and
    active widths) with each token's top-1 expert disabled in every stage at evaluation
    (Cartesian more robust: paper 27.7 vs 3095 at full scale)
  DA-MoE (k_avg = 2, importance from the model's attention) vs top-2   perplexity
"""
import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_lm  # noqa: E402

AUX = {"load_balance": 0.01, "z_loss": 0.001}


def stage(experts, f, routing, aggregation=None, shared=None):
    s = {"experts": experts, "ffn_hidden_size": f, "routing": routing, "aux_loss": AUX}
    if aggregation:
        s["aggregation"] = aggregation
    if shared:
        s["shared_expert"] = {"ffn_hidden_size": shared, "mix": "coefficient"}
    return s


def methods(f):
    """Layer configs; hidden_size and layers are set by train_lm."""
    top2 = {"kind": "topk", "k": 2}
    layer = lambda *stages: {"model": {"hidden_size": 0, "layer": {"input_norm": "none", "stages": list(stages)}}}
    return {
        "top2": layer(stage(8, f, top2)),
        "dag": layer(stage(8, f, top2, {"kind": "dag", "levels": 2})),
        "dynamic": layer(stage(8, f, {"kind": "dynamic", "k_avg": 2, "k_min": 1, "k_max": 4, "budget": "exact"})),
        "finegrained": layer(stage(16, f // 2, {"kind": "topk", "k": 4}, shared=f)),
        "cartesian": layer(stage(8, f // 2, top2, shared=f // 2), stage(8, f // 2, top2, shared=f // 2)),
    }


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, digits=2):
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--ffn", type=int, default=128, help="expert width f (sub-experts: f/2)")
    p.add_argument("--only", default="", help="comma-separated subset of methods")
    p.add_argument("--readme", default=None, help="write the table into this README between the markers")
    args = p.parse_args()
    configs = methods(args.ffn)
    names = [n for n in configs if not args.only or n in args.only.split(",")]
    results = {n: [] for n in names}
    t0 = time.monotonic()
    for seed in range(args.seeds):
        for n in names:
            lm_args = train_lm.parser().parse_args(
                ["--steps", str(args.steps), "--seed", str(seed), "--d-model", str(args.d_model), "--sample", "0",
                 "--no-eval-before", "--eval-batches", "32"] +
                (["--eval-drop-top", "1"] if n in ("cartesian", "finegrained") else []))
            lm_args.moe = configs[n]
            with open(os.devnull, "w") as quiet:
                r = train_lm.train(lm_args, out=quiet)
            results[n].append(r)
            ppl = math.exp(r["val_loss_after"])
            extra = f", top-1 disabled {math.exp(r['val_loss_drop_top']):.2f}" if "val_loss_drop_top" in r else ""
            print(f"seed {seed} {n:12s} val ppl {ppl:.3f}{extra} ({r['seconds']:.0f} s)", flush=True)
    tokens = args.steps * lm_args.batch * lm_args.seq
    ppl = {n: [math.exp(r["val_loss_after"]) for r in results[n]] for n in names}
    lines = [f"Byte-level LM on `fortunes` (train_lm.py: d={args.d_model}, 2 blocks, 4 heads, seq 64, batch 16, "
             f"lr 3e-3 warm-up 30 + cosine), "
             f"{args.steps} steps = {tokens} training tokens per run, {args.seeds} seeds, validation perplexity "
             f"(mean ± std over seeds; Δ: the paired difference to the pair's baseline, same seed, same data "
             f"order), produced by `scripts/with-blas-core.sh python3 python/examples/compare_methods.py "
             f"--seeds {args.seeds} --steps {args.steps} --d-model {args.d_model} --ffn {args.ffn}` in "
             f"{time.monotonic() - t0:.0f} s.", "",
             "| method | config | validation perplexity | Δ vs baseline | top-1 disabled: perplexity | ratio |",
             "|---|---|---|---|---|---|"]
    desc = {"top2": "top-2 of 8, weighted sum, f=%d (baseline)" % args.ffn, "dag": "top-2 of 8, DAG aggregation L=2",
            "dynamic": "DA-MoE k_avg=2 (1..4) from attention", "finegrained": "top-4 of 16, f/2, shared f (baseline)",
            "cartesian": "2 stages x top-2 of 8, f/2, shared f/2 each"}
    baseline = {"dag": "top2", "dynamic": "top2", "cartesian": "finegrained"}
    for n in names:
        drop = [math.exp(r["val_loss_drop_top"]) for r in results[n] if "val_loss_drop_top" in r]
        ratio = [d / q for d, q in zip(drop, ppl[n])]
        b = baseline.get(n)
        delta = f"{fmt([x - y for x, y in zip(ppl[n], ppl[b])], 3)} (vs {b})" if b in ppl else ""
        lines.append(f"| {n} | {desc[n]} | {fmt(ppl[n], 3)} | {delta} | {fmt(drop) if drop else ''} | "
                     f"{fmt(ratio, 3) if ratio else ''} |")
    table = "\n".join(lines)
    print(table)
    if args.readme:
        text = open(args.readme, encoding="utf-8").read()
        begin, end = "<!-- compare_methods: begin -->", "<!-- compare_methods: end -->"
        if begin not in text or end not in text:
            raise SystemExit(f"{args.readme}: no {begin} ... {end} markers")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(head + begin + "\n" + table + "\n" + end + tail)


if __name__ == "__main__":
    main()
