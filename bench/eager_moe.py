"""The plain PyTorch MoE layer the benchmarks compare against (Mixtral style: softmax router,
top-k renormalised gates, a loop over experts of swiglu FFNs, index_add). Shared by
bench_torch.py (CPU) and bench_gpu_torch.py (CUDA)."""


def eager_moe(x, router, experts, k):
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(F.linear(x, router), dim=-1)
    gates, idx = torch.topk(probs, k, dim=-1)
    gates = gates / gates.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for e, (wg, wu, wd) in enumerate(experts):
        token, slot = torch.where(idx == e)
        if token.numel() == 0:
            continue
        h = x.index_select(0, token)
        y = F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)
        out.index_add_(0, token, y * gates[token, slot, None])
    return out
