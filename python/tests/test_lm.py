"""The example language model (python/examples/train_lm.py): through a 4-worker local cluster
the first steps' losses equal the local run; checkpoint and resume continue the same run; the
top-1-disabled evaluation option. Needs Debian's `fortunes` (the corpus)."""
import os
import pathlib
import sys
import tempfile
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python" / "examples"))
import torch  # noqa: E402
import train_lm  # noqa: E402
from switchyard.cluster import LocalCluster  # noqa: E402
from switchyard.torch import MoELayer  # noqa: E402

CLI = os.environ.get("SWITCHYARD_CLI", str(ROOT / "build" / "switchyard"))
LOCAL = str(ROOT / "python" / "tests" / "cluster.yaml")


def run(*extra, cluster=None):
    args = ["--steps", "6", "--sample", "0", "--eval-batches", "2", "--no-eval-before", "--batch", "8", "--seq", "32"]
    args += list(extra) + (["--cluster", cluster] if cluster else [])
    with open(os.devnull, "w") as quiet:
        return train_lm.train(train_lm.parser().parse_args(args), out=quiet)


class LanguageModelTest(unittest.TestCase):
    def test_cluster_losses_equal_local_and_resume_continues(self):
        local = run()
        with LocalCluster(CLI, LOCAL) as cluster, tempfile.TemporaryDirectory() as tmp:
            remote = run(cluster=cluster.endpoint)
            for step, (a, b) in enumerate(zip(local["losses"], remote["losses"])):
                self.assertLessEqual(abs(a - b), 1e-5 * abs(a), f"step {step}: local {a} cluster {b}")
            # Stop after 3 steps, resume from the checkpoint (experts' state on the workers).
            ckpt = os.path.join(tmp, "lm.pt")
            first = run("--checkpoint", ckpt, "--stop-after", "3", cluster=cluster.endpoint)
            rest = run("--checkpoint", ckpt, "--resume", cluster=cluster.endpoint)
            self.assertEqual(first["losses"] + rest["losses"], remote["losses"])
            self.check_layer_on_cluster(cluster.endpoint)

    def check_layer_on_cluster(self, endpoint):
        """MoELayer(config, cluster=...) equals the local layer; step_experts moves the workers'
        experts as a local AdamW moves local ones."""
        cfg = str(ROOT / "configs" / "models" / "combined.yaml")
        local, remote = MoELayer(cfg, seed=4), MoELayer(cfg, cluster=endpoint, seed=4)
        self.assertTrue(all(".experts." not in n for n in remote.state_dict()))
        x, g, imp = torch.randn(32, 64), torch.randn(32, 64), torch.rand(2, 16)
        outs = []
        for layer in (local, remote):
            xi = x.clone().requires_grad_(True)
            y = layer(xi, importance=imp)
            ((y * g).sum() + layer.aux_loss).backward()
            outs.append((y.detach(), xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-6)
        for n, grad in outs[1][2].items():
            torch.testing.assert_close(grad, outs[0][2][n], rtol=1e-5, atol=1e-6, msg=n)
        remote.step_experts(lr=1e-2)
        with torch.no_grad():
            for n, p in local.named_parameters():  # one plain AdamW step of the local experts
                if ".experts." in n:
                    p -= 1e-2 * p.grad / (p.grad.abs() + 1e-8)
            self.assertLess((remote(x, importance=imp) - local(x, importance=imp)).abs().max().item(), 1e-4)

    def test_local_resume_is_bit_identical(self):
        straight = run()
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "lm.pt")
            first = run("--checkpoint", ckpt, "--stop-after", "2")
            rest = run("--checkpoint", ckpt, "--resume")
        self.assertEqual(first["losses"] + rest["losses"], straight["losses"])
        self.assertEqual(rest["val_loss_after"], straight["val_loss_after"])

    def test_disabling_the_top_expert_hurts(self):
        r = run("--moe", str(ROOT / "configs" / "models" / "topk.yaml"), "--eval-drop-top", "1")
        self.assertGreater(r["val_loss_drop_top"], r["val_loss_after"])


if __name__ == "__main__":
    unittest.main()
