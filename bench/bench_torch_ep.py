#!/usr/bin/python3
"""The peer of `switchyard colocated`: PyTorch expert parallelism over torch.distributed (gloo),
as DeepSpeed-MoE runs it on CPUs. N rank processes, each with T/N tokens and E/N experts; per
step: router (softmax, top-k, renormalised gates), rows sorted by expert, the per-expert counts
and then the rows all-to-all (torch.distributed.nn.functional.all_to_all_single, autograd),
SwiGLU experts per (source rank, expert) segment, the rows all-to-all back, weighted combine,
h = x + moe(x), loss = 1/2 mean over all T tokens of |h - tanh(x)|^2, backward, the router's
gradient all-reduced, AdamW. Same shape, data rule and threads per rank as the Switchyard job.

    python3 bench/bench_torch_ep.py [--ranks 4] [--steps 8] [--tokens 2048]
Prints `torch_ep_step_ms: M` (rank 0, median step after the first).
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dnn
import torch.multiprocessing as mp
import torch.nn.functional as F

E, K, D, FF = 16, 2, 256, 512


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moe_forward(x, router, experts, rank, world):
    per = E // world
    gates, idx = torch.topk(torch.softmax(x @ router.t(), dim=-1), K, dim=-1)
    gates = gates / gates.sum(-1, keepdim=True)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // K
    counts = torch.bincount(flat, minlength=E)                      # rows per expert, sent
    counts_in = torch.empty_like(counts)                            # [source][local expert]
    dist.all_to_all_single(counts_in, counts)
    send_split = counts.view(world, per).sum(1).tolist()
    recv_split = counts_in.view(world, per).sum(1).tolist()
    rows = x.index_select(0, token)
    received = dnn.all_to_all_single(torch.empty(sum(recv_split), D), rows, recv_split, send_split)
    # Each local expert computes its rows from every source rank in one product (DeepSpeed-MoE and
    # Tutel batch an expert's rows too): regroup the arrival order (source, expert) by expert.
    seg = counts_in.view(world, per)
    first = torch.cumsum(seg.reshape(-1), 0) - seg.reshape(-1)
    perm = torch.cat([torch.arange(int(first[s * per + j]), int(first[s * per + j] + seg[s][j]))
                      for j in range(per) for s in range(world)]) if received.shape[0] else torch.empty(0, dtype=torch.long)
    grouped = received.index_select(0, perm)
    outs, start = [], 0
    for j, n in enumerate(seg.sum(0).tolist()):
        h = grouped[start:start + n]
        wg, wu, wd = experts[j]
        outs.append(F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd))
        start += n
    computed = torch.empty_like(received).index_copy(0, perm, torch.cat(outs)) if outs else received
    back = dnn.all_to_all_single(torch.empty(sum(send_split), D), computed, send_split, recv_split)
    weighted = back * gates.reshape(-1).index_select(0, order).unsqueeze(1)
    return torch.zeros_like(x).index_add(0, token, weighted)


def rank_main(rank, world, port, args, results):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    per = E // world
    gen = torch.Generator().manual_seed(1)
    router = (torch.randn(E, D, generator=gen) * D ** -0.5).requires_grad_(True)
    all_experts = [[(torch.randn(*shape, generator=gen) * shape[1] ** -0.5) for shape in ((FF, D), (FF, D), (D, FF))]
                   for _ in range(E)]
    experts = [[w.requires_grad_(True) for w in all_experts[rank * per + j]] for j in range(per)]
    opt = torch.optim.AdamW([router] + [w for e in experts for w in e], lr=1e-3, weight_decay=0.0)
    times = []
    for step in range(args.steps):
        g = torch.Generator().manual_seed(1000003 * step + rank)
        x = torch.randn(args.tokens // world, D, generator=g)
        target = torch.tanh(x)
        dist.barrier()  # every rank has its data: the clock times the step only
        t0 = time.perf_counter()
        h = x + moe_forward(x, router, experts, rank, world)
        loss = 0.5 * ((h - target) ** 2).sum() / args.tokens
        loss.backward()
        dist.all_reduce(router.grad)  # data parallel: the dense parameter's gradient summed
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        results.put((statistics.median(times[1:]) * 1e3, total.item()))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="threads per rank (0: cores / ranks, at least 1)")
    args = ap.parse_args()
    if args.threads < 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.ranks)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(rank_main, args=(args.ranks, free_port(), args, results), nprocs=args.ranks, start_method="spawn")
    ms, loss = results.get()
    print(f"torch {torch.__version__} expert parallelism over gloo: {args.ranks} ranks, {args.threads} thread(s) each, "
          f"{args.tokens} tokens/step, d={D} E={E} f={FF} top-{K}; last loss {loss:.4f}")
    print(f"torch_ep_step_ms: {ms:.1f}")


if __name__ == "__main__":
    main()
