"""switchyard.torch with backend="cuda": every shipped config's forward output, input gradient
and parameter gradients against the CPU module within 1e-5 relative (per tensor, to its largest
magnitude), CUDA tensors in and out. Skipped (with the reason) where torch sees no CUDA device;
the error cases run everywhere."""
import unittest

import torch

from switchyard import InputError
from switchyard.torch import MoELayer
from test_torch_module import CONFIGS, attention_probs, config_path  # this directory


def close(test, got, want, what, rel=1e-5):
    got = got.detach().cpu().double()
    want = want.detach().cpu().double()
    scale = want.abs().max().item() if want.numel() else 0.0
    worst = (got - want).abs().max().item() if want.numel() else 0.0
    test.assertLessEqual(worst, rel * scale, f"{what}: max |cuda - cpu| {worst} vs scale {scale}")


class BackendErrors(unittest.TestCase):
    def test_unknown_backend_is_refused(self):
        with self.assertRaisesRegex(InputError, "backend 'tpu'"):
            MoELayer(config_path("topk"), backend="tpu")

    def test_cuda_without_a_device_is_refused(self):
        if torch.cuda.is_available():
            self.skipTest("a CUDA device is present")
        with self.assertRaisesRegex(InputError, "backend 'cuda'"):
            MoELayer(config_path("topk"), backend="cuda")


@unittest.skipUnless(torch.cuda.is_available(), "torch sees no CUDA device")
class CudaMatchesCpu(unittest.TestCase):
    def test_every_shipped_config(self):
        for name in CONFIGS:
            with self.subTest(config=name):
                cpu = MoELayer(config_path(name), seed=3)
                dev = MoELayer(config_path(name), seed=3, backend="cuda")
                gen = torch.Generator().manual_seed(3)
                d = cpu.hidden_size
                x = torch.randn(2, 16, d, generator=gen)
                g = torch.randn(2, 16, d, generator=gen)
                att = attention_probs(2, 2, 16, gen) if cpu.needs_importance else None
                xc = x.clone().requires_grad_()
                xd = x.cuda().requires_grad_()
                yc = cpu(xc, attention=att)
                yd = dev(xd, attention=att.cuda() if att is not None else None)
                self.assertEqual(yd.device.type, "cuda")
                close(self, yd, yc, f"{name} output")
                ((yc * g).sum() + cpu.aux_loss).backward()
                ((yd * g.cuda()).sum() + dev.aux_loss).backward()
                self.assertEqual(xd.grad.device.type, "cuda")
                close(self, xd.grad, xc.grad, f"{name} grad_input")
                dev_params = dict(dev.named_parameters())
                for pname, p in cpu.named_parameters():
                    q = dev_params[pname]
                    self.assertEqual(q.device.type, "cuda")
                    close(self, q.grad, p.grad, f"{name} grad {pname}")

    def test_an_optimizer_step_moves_the_engine_weights(self):
        dev = MoELayer(config_path("topk"), seed=4, backend="cuda")
        opt = torch.optim.AdamW(dev.parameters(), lr=1e-2)
        x = torch.randn(32, dev.hidden_size, device="cuda")
        y0 = dev(x).detach().clone()
        (dev(x).square().sum() + dev.aux_loss).backward()
        opt.step()
        self.assertFalse(torch.equal(dev(x).detach(), y0))  # the engine read the updated parameters


if __name__ == "__main__":
    unittest.main()
