#!/usr/bin/python3
"""A small byte-level MoE language model: a decoder-only Transformer with PyTorch attention and
Switchyard MoE FFN layers (switchyard.torch.MoEModel), trained on the `fortunes` corpus.

    python3 python/examples/train_lm.py --moe configs/models/combined.yaml --steps 300
    python3 python/examples/train_lm.py --moe ... --cluster 127.0.0.1:PORT   # experts on workers

Corpus: Debian's `fortunes` package (/usr/share/games/fortunes, plain English text, ~2.6 MB,
fortunes separated by "%" lines; the `off/` subfolder is not read). Every file that is not a
.dat index or a .u8 link, in sorted order, split into fortunes; fortune i goes to validation
when i % 20 == 0, else to training (a fixed split, ~5%).

The MoE config gives the layer (METHODS.md); its `model.hidden_size` and `model.layers` are
overridden by --d-model and --layers. Dynamic stages (DA-MoE) read token importance from the
attention probabilities of the block's own attention. The loss is the byte cross-entropy plus
every layer's aux loss; validation reports the cross-entropy and its perplexity.
"""
import argparse
import json
import math
import os
import sys
import time

if "--cluster" in sys.argv:
    # The client shares the cores with the workers: OpenMP threads that spin between parallel
    # regions (libgomp's default) starved a local cluster's heartbeats on 2 cores (measured:
    # 3 of 6 runs declared a worker dead; 0 of 6 with PASSIVE). Set before torch loads libgomp.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
import yaml
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from switchyard.torch import MoEModel  # noqa: E402

CORPUS_DIR = "/usr/share/games/fortunes"


# ---------------------------------------------------------------- data

def load_corpus(directory=CORPUS_DIR):
    """(train bytes, validation bytes): every 20th fortune is validation."""
    if not os.path.isdir(directory):
        raise SystemExit(f"train_lm: corpus {directory} not found: apt-get install fortunes")
    names = sorted(n for n in os.listdir(directory)
                   if not n.endswith((".dat", ".u8")) and os.path.isfile(os.path.join(directory, n)))
    fortunes = []
    for n in names:
        with open(os.path.join(directory, n), "rb") as f:
            fortunes += [p.strip(b"\n") + b"\n" for p in f.read().split(b"\n%\n") if p.strip()]
    train = b"".join(p for i, p in enumerate(fortunes) if i % 20 != 0)
    val = b"".join(p for i, p in enumerate(fortunes) if i % 20 == 0)
    return torch.frombuffer(bytearray(train), dtype=torch.uint8), torch.frombuffer(bytearray(val), dtype=torch.uint8)


def batch_at(data, starts, seq):
    idx = starts[:, None] + torch.arange(seq + 1)[None, :]
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


# ---------------------------------------------------------------- model

class Block(nn.Module):
    """Pre-norm attention (returning its probabilities, DA-MoE's importance source); the FFN
    is a Switchyard layer held by the LM's MoEModel."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def attention(self, x):
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
        probs = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(b, length, d)
        return self.proj(out), probs


class MoELM(nn.Module):
    def __init__(self, moe_config, d, layers, heads, seq, seed, cluster=None):
        super().__init__()
        torch.manual_seed(seed)
        self.seq = seq
        self.embed, self.pos = nn.Embedding(256, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, 256)
        self.moe = MoEModel(moe_config, cluster=cluster, seed=seed, name="train_lm")
        self.needs_importance = self.moe.layers[0].needs_importance

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1]))[None]
        aux = torch.zeros(())
        for block, moe in zip(self.blocks, self.moe.layers):
            a, probs = block.attention(block.ln1(h))
            h = h + a
            h = h + moe(block.ln2(h), attention=probs.detach() if self.needs_importance else None)
            aux = aux + moe.aux_loss
        return self.head(self.ln_f(h)), aux


def moe_config(path_or_dict, d, layers):
    if isinstance(path_or_dict, dict):
        cfg = json.loads(json.dumps(path_or_dict))
    else:
        with open(path_or_dict, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    cfg["model"]["hidden_size"] = d
    cfg["model"]["layers"] = layers
    cfg.pop("cluster", None)
    return cfg


# ---------------------------------------------------------------- training

class Progress:
    """A progress bar on a terminal; a line every 10% otherwise (logs)."""

    def __init__(self, total, out=sys.stdout):
        self.total, self.out, self.start = total, out, time.monotonic()
        self.tty = out.isatty()
        self.last = -1

    def update(self, done, text):
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        filled = int(30 * done / self.total)
        line = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} {text} eta {eta:4.0f}s"
        if self.tty:
            self.out.write("\r" + line + ("\n" if done == self.total else ""))
            self.out.flush()
        elif done * 10 // self.total != self.last or done == self.total:
            self.last = done * 10 // self.total
            print(line, file=self.out, flush=True)


@torch.no_grad()
def evaluate(lm, val, args, drop_top=0):
    """Mean byte cross-entropy over fixed, evenly spaced validation windows."""
    lm.eval()
    lm.moe.set_drop_top_experts(drop_top)
    n = args.eval_batches * args.batch
    starts = torch.linspace(0, len(val) - args.seq - 2, n).long()
    total = 0.0
    for i in range(args.eval_batches):
        x, y = batch_at(val, starts[i * args.batch:(i + 1) * args.batch], args.seq)
        logits, _ = lm(x)
        total += F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)).item()
    lm.moe.set_drop_top_experts(0)
    lm.train()
    return total / args.eval_batches


@torch.no_grad()
def generate(lm, prompt, length, temperature=0.8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = list(prompt)
    lm.eval()
    for _ in range(length):
        ctx = torch.tensor(out[-lm.seq:], dtype=torch.long)[None]
        logits, _ = lm(ctx)
        p = torch.softmax(logits[0, -1] / temperature, dim=-1)
        out.append(int(torch.multinomial(p, 1, generator=gen)))
    lm.train()
    return bytes(out)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(path, lm, opt, step, gen, attached):
    tmp = path + ".tmp"
    torch.save({"step": step, "model": lm.state_dict(), "opt": opt.state_dict(), "rng": gen.get_state()}, tmp)
    os.replace(tmp, path)
    if attached:  # the experts' weights and AdamW state: each worker writes its own file there
        lm.moe.save_expert_checkpoint(path + ".experts")


def train(args, out=sys.stdout):
    """Trains and returns a dict of results (losses per step, validation before and after)."""
    torch.set_num_threads(args.threads)
    train_data, val = load_corpus(args.corpus)
    cfg = moe_config(args.moe, args.d_model, args.layers)
    lm = MoELM(cfg, args.d_model, args.layers, args.heads, args.seq, args.seed, cluster=args.cluster)
    betas = (0.9, 0.95)
    opt = torch.optim.AdamW(lm.parameters(), lr=args.lr, betas=betas, eps=1e-8, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint)
        lm.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        step = state["step"]
        if args.cluster:
            lm.moe.restore_expert_checkpoint(args.checkpoint + ".experts")
        print(f"resumed from {args.checkpoint} at step {step}", file=out)
    n_params = sum(p.numel() for p in lm.parameters())
    print(f"corpus: {len(train_data)} train bytes, {len(val)} validation bytes ({args.corpus}); "
          f"parameters held here: {n_params}; experts {'local' if lm.moe.experts_local else 'on ' + args.cluster}",
          file=out)
    result = {"losses": [], "val_loss_before": evaluate(lm, val, args) if args.eval_before else None}
    if result["val_loss_before"] is not None:
        print(f"validation before: loss {result['val_loss_before']:.4f} "
              f"perplexity {math.exp(result['val_loss_before']):.2f}", file=out)
    bar = Progress(args.steps, out)
    t0 = time.monotonic()
    tokens = 0
    while step < args.steps:
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_data) - args.seq - 2, (args.batch,), generator=gen)
        x, y = batch_at(train_data, starts, args.seq)
        logits, aux = lm(x)
        ce = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        loss = ce + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not lm.moe.experts_local:
            lm.moe.step_experts(lr=lr, betas=betas, eps=1e-8, weight_decay=args.weight_decay)
        step += 1
        tokens += x.numel()
        result["losses"].append(ce.item())
        bar.update(step, f"loss {ce.item():.3f} {tokens / (time.monotonic() - t0):6.0f} tok/s")
        if args.checkpoint and args.checkpoint_every and step % args.checkpoint_every == 0:
            save_checkpoint(args.checkpoint, lm, opt, step, gen, not lm.moe.experts_local)
        if args.stop_after and step >= args.stop_after:
            break
    result["seconds"] = time.monotonic() - t0
    result["val_loss_after"] = evaluate(lm, val, args)
    print(f"validation after: loss {result['val_loss_after']:.4f} perplexity {math.exp(result['val_loss_after']):.2f}",
          file=out)
    if args.eval_drop_top:
        result["val_loss_drop_top"] = evaluate(lm, val, args, drop_top=args.eval_drop_top)
        print(f"validation with each token's top-{args.eval_drop_top} expert(s) disabled: perplexity "
              f"{math.exp(result['val_loss_drop_top']):.2f}", file=out)
    if args.sample:
        text = generate(lm, b"The ", args.sample, seed=args.seed).decode("utf-8", "replace")
        print("sample:\n" + text, file=out)
    if args.checkpoint:
        save_checkpoint(args.checkpoint, lm, opt, step, gen, not lm.moe.experts_local)
    if args.log_json:
        with open(args.log_json, "w") as f:
            json.dump(result, f)
    return result


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    p.add_argument("--moe", default=os.path.join(root, "configs", "models", "combined.yaml"),
                   help="MoE layer config (YAML with a model: section)")
    p.add_argument("--cluster", default=None, help="host:port of a Switchyard coordinator (experts on workers)")
    p.add_argument("--corpus", default=CORPUS_DIR)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--eval-before", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--eval-drop-top", type=int, default=0,
                   help="also report validation with each token's N best experts disabled in every stage")
    p.add_argument("--sample", type=int, default=200, help="bytes to generate at the end (0: none)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (experts on a cluster: also FILE.experts/)")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--stop-after", type=int, default=0, help="stop after this many steps (resume later)")
    p.add_argument("--log-json", default=None, help="write losses and validation results here")
    return p


if __name__ == "__main__":
    train(parser().parse_args())
