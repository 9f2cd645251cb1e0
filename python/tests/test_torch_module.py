"""switchyard.torch.MoELayer: gradients against finite differences for every shipped config,
bit-identity with the CLI engine, state_dict round trips, errors, training with a torch
optimizer. Run: python3 -m unittest discover -s python/tests (SWITCHYARD_CLI, SWITCHYARD_LIB)."""
import os
import pathlib
import subprocess
import tempfile
import unittest

import torch

from switchyard import ConfigError, InputError, npy
from switchyard.torch import MoELayer, MoEModel, load_weights, save_weights

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ["topk", "dynamic", "dag", "cartesian", "combined"]
CLI = os.environ.get("SWITCHYARD_CLI", str(ROOT / "build" / "switchyard"))


def config_path(name):
    return str(ROOT / "configs" / "models" / f"{name}.yaml")


def attention_probs(b, h, length, gen):
    """Causal attention probabilities [B, H, L, L]."""
    scores = torch.randn(b, h, length, length, generator=gen) * 1.5
    mask = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1).contiguous()


class Case:
    """A layer, an input and what forward needs, for one shipped config."""

    def __init__(self, name, seed=1, b=2, length=8):
        self.layer = MoELayer(config_path(name), seed=seed)
        gen = torch.Generator().manual_seed(seed)
        d = self.layer.hidden_size
        self.x = torch.randn(b, length, d, generator=gen)
        self.g = torch.randn(b, length, d, generator=gen)
        self.attention = attention_probs(b, 2, length, gen) if self.layer.needs_importance else None

    def loss(self, x=None, with_aux=True):
        y = self.layer(self.x if x is None else x, attention=self.attention)
        loss = (y.double() * self.g.double()).sum()
        return loss + self.layer.aux_loss.double() if with_aux else loss

    def routing(self):
        return [(s["k"].clone(), s["expert_rows"].clone()) for s in self.layer.stats]


def same_routing(a, b):
    return all(torch.equal(k1, k2) and torch.equal(r1, r2) for (k1, r1), (k2, r2) in zip(a, b))


def directional_check(test, case, tensor, grad, what, h=1e-3, rtol=2e-2):
    """<grad, v> against (L(t + h v) − L(t − h v)) / 2h along random directions v for which the
    routing does not change between the two points (top-k is piecewise constant)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        case.loss()
        base = case.routing()
        for _ in range(6):
            v = torch.rand(tensor.shape, generator=gen) * 2 - 1
            tensor.add_(h * v)
            lp = case.loss().item()
            rp = case.routing()
            tensor.sub_(2 * h * v)
            lm = case.loss().item()
            rm = case.routing()
            tensor.add_(h * v)
            if not (same_routing(base, rp) and same_routing(base, rm)):
                continue  # a routing boundary lies within h: draw another direction
            numeric = (lp - lm) / (2 * h)
            analytic = float((grad.double() * v.double()).sum())
            test.assertLessEqual(abs(numeric - analytic), rtol * max(1.0, abs(analytic)),
                                 f"{what}: numeric {numeric:.6f} analytic {analytic:.6f}")
            return
    test.fail(f"{what}: every direction crossed a routing boundary")


class GradientTest(unittest.TestCase):
    def test_input_and_parameter_gradients_match_finite_differences(self):
        for name in CONFIGS:
            with self.subTest(config=name):
                case = Case(name)
                x = case.x.clone().requires_grad_(True)
                case.layer.zero_grad()
                case.loss(x).backward()
                directional_check(self, case, case.x, x.grad, f"{name}: d/dx")
                for pname, p in case.layer.named_parameters():
                    directional_check(self, case, p.data, p.grad, f"{name}: d/d {pname}")

    def test_aux_loss_carries_gradient(self):
        case = Case("topk")
        case.layer.zero_grad()
        y = case.layer(case.x)
        self.assertGreater(case.layer.aux_loss.item(), 0)
        case.layer.aux_loss.backward()  # y unused: only the aux loss
        router = case.layer.get_parameter("stages.0.router.weight")
        self.assertGreater(router.grad.abs().sum().item(), 0)
        del y

        class AuxOnly(Case):
            def loss(self, x=None, with_aux=True):
                self.layer(self.x if x is None else x, attention=self.attention)
                return self.layer.aux_loss.double()

        aux = AuxOnly("topk")
        aux.layer.zero_grad()
        aux.loss().backward()
        directional_check(self, aux, aux.layer.get_parameter("stages.0.router.weight").data,
                          aux.layer.get_parameter("stages.0.router.weight").grad, "aux loss: d/d router")


class EngineEquivalenceTest(unittest.TestCase):
    def test_module_equals_cli_engine_bit_for_bit(self):
        for name in CONFIGS:
            with self.subTest(config=name), tempfile.TemporaryDirectory() as tmp:
                case = Case(name, seed=3)
                weights = os.path.join(tmp, "w.safetensors")
                save_weights(case.layer.state_dict(), weights)
                x2 = case.x.reshape(-1, case.layer.hidden_size)
                npy.save(os.path.join(tmp, "x.npy"), x2)
                npy.save(os.path.join(tmp, "g.npy"), case.g.reshape(x2.shape))
                extra = []
                if case.attention is not None:
                    npy.save(os.path.join(tmp, "a.npy"), case.attention)
                    extra = ["--attention", os.path.join(tmp, "a.npy")]
                common = ["--config", config_path(name), "--weights", weights, "--input", os.path.join(tmp, "x.npy")]
                subprocess.run([CLI, "layer", "forward", *common, "--output", os.path.join(tmp, "y.npy"), *extra],
                               check=True, capture_output=True)
                subprocess.run([CLI, "layer", "backward", *common, "--grad-output", os.path.join(tmp, "g.npy"),
                                "--out-dir", tmp, *extra], check=True, capture_output=True)
                x = case.x.clone().requires_grad_(True)
                case.layer.zero_grad()
                y = case.layer(x, attention=case.attention)
                ((y * case.g).sum() + case.layer.aux_loss).backward()
                self.assertTrue(torch.equal(y.detach().reshape(x2.shape), npy.load(os.path.join(tmp, "y.npy"))))
                self.assertTrue(torch.equal(x.grad.reshape(x2.shape), npy.load(os.path.join(tmp, "grad_input.npy"))))
                cli_grads = load_weights(os.path.join(tmp, "grad_weights.safetensors"))
                for pname, p in case.layer.named_parameters():
                    self.assertTrue(torch.equal(p.grad, cli_grads[pname]), f"{name}: gradient of {pname}")

    def test_state_dict_round_trips_with_weight_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "w.safetensors")
            subprocess.run([CLI, "layer", "init", "--config", config_path("combined"), "--seed", "5", "--out", path],
                           check=True, capture_output=True)
            layer = MoELayer(config_path("combined"), weights=path)
            on_disk = load_weights(path)
            self.assertEqual(set(layer.state_dict()), set(on_disk))
            for k, v in layer.state_dict().items():
                self.assertTrue(torch.equal(v, on_disk[k]), k)
            self.assertEqual(set(MoELayer(config_path("combined"), seed=5).state_dict()), set(on_disk))
            # load_state_dict copies in place: the engine sees the new values.
            other = MoELayer(config_path("combined"), seed=9)
            x = torch.randn(16, layer.hidden_size)
            imp = torch.rand(16)
            other.load_state_dict(layer.state_dict())
            self.assertTrue(torch.equal(other(x, importance=imp), layer(x, importance=imp)))

    def test_multi_layer_model_names_and_rebinding(self):
        cfg = {"model": {"hidden_size": 16, "layers": 2, "layer": {"stages": [
            {"experts": 4, "ffn_hidden_size": 8, "routing": {"kind": "topk", "k": 2}}]}}}
        model = MoEModel(cfg, seed=2)
        names = set(model.state_dict())
        self.assertIn("layers.1.stages.0.router.weight", names)
        self.assertIn("layers.0.stages.0.experts.3.down_proj.weight", names)
        x = torch.randn(5, 16)
        y0 = model.layers[1](x).detach().clone()
        p = model.layers[1].get_parameter("stages.0.router.weight")
        p.data = p.data.clone() * -1  # torch moved the parameter: the engine follows
        self.assertFalse(torch.equal(model.layers[1](x), y0))


class ErrorTest(unittest.TestCase):
    def test_bad_shapes_and_configs_raise_naming_the_cause(self):
        layer = MoELayer(config_path("topk"))
        with self.assertRaisesRegex(InputError, "hidden_size 64"):
            layer(torch.randn(4, 63))
        with self.assertRaisesRegex(TypeError, "float32"):
            layer(torch.randn(4, 64, dtype=torch.float64))
        with self.assertRaisesRegex(ConfigError, "hidden_size"):
            MoELayer({"model": {"hidden_size": -1, "layer": {"stages": [{"experts": 2, "ffn_hidden_size": 4}]}}})
        with self.assertRaisesRegex(ConfigError, "ffn_hidden_size"):
            MoELayer({"model": {"hidden_size": 8, "layer": {"stages": [{"experts": 2}]}}})
        dynamic = MoELayer(config_path("dynamic"))
        with self.assertRaisesRegex(InputError, "importance"):
            dynamic(torch.randn(8, dynamic.hidden_size))
        with self.assertRaisesRegex(InputError, "attention"):
            dynamic(torch.randn(8, dynamic.hidden_size), attention=torch.rand(1, 2, 4, 4))
        with self.assertRaisesRegex(InputError, "up_proj"):
            w = dict(layer.state_dict())
            del w["stages.0.experts.1.up_proj.weight"]
            MoELayer(config_path("topk"), weights=w)
        with self.assertRaisesRegex(RuntimeError, "experts are local"):
            layer.step_experts()

    def test_backward_of_an_older_forward_is_refused(self):
        layer = MoELayer(config_path("topk"))
        x = torch.randn(4, 64, requires_grad=True)
        y1 = layer(x)
        layer(x)
        with self.assertRaisesRegex(RuntimeError, "older forward"):
            y1.sum().backward()


class TrainingTest(unittest.TestCase):
    def test_torch_optimizer_trains_dense_and_local_experts(self):
        torch.manual_seed(0)
        layer = MoELayer.topk(hidden_size=16, num_experts=4, k=2, ffn_hidden_size=32, seed=1)
        target = torch.nn.Linear(16, 16)
        opt = torch.optim.Adam(layer.parameters(), lr=3e-3)
        x = torch.randn(64, 16)
        with torch.no_grad():
            want = target(x)
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        losses = []
        for _ in range(60):
            opt.zero_grad()
            loss = ((layer(x) + x - want) ** 2).mean() + layer.aux_loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.assertLess(losses[-1], 0.7 * losses[0])
        after = layer.state_dict()
        self.assertFalse(torch.equal(before["stages.0.experts.0.up_proj.weight"],
                                     after["stages.0.experts.0.up_proj.weight"]))
        self.assertFalse(torch.equal(before["stages.0.router.weight"], after["stages.0.router.weight"]))
        st = layer.stats[0]
        self.assertEqual(int(st["k"].sum()), st["assignments"])
        self.assertEqual(int(st["expert_rows"].sum()), 64 * 2)


if __name__ == "__main__":
    unittest.main()
