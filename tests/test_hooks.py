"""Tests of the forward-hook helper :func:`dndbench.hooks.record_outputs`."""
from __future__ import annotations

from collections import OrderedDict

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from dndbench.errors import ConfigError  # noqa: E402
from dndbench.hooks import first_tensor, record_outputs  # noqa: E402


class Pair(nn.Module):
    """A layer whose output is a tuple (like a transformer block returning extra state)."""

    def forward(self, x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        return x * 2, x - 1


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 4, 3, padding=1)),
        ("relu", nn.ReLU()),
        ("block", nn.Sequential(OrderedDict([("inner", nn.Conv2d(4, 2, 1))]))),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flat", nn.Flatten()),
        ("fc", nn.Linear(2, 5)),
    ]))


def hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


@pytest.mark.parametrize("layers", [["conv"], ["block.inner", "fc"], ["fc", "conv", "relu"]])
def test_records_each_layer_output(layers: list[str]) -> None:
    net = make_net().eval()
    x = torch.randn(2, 3, 8, 8)
    modules = dict(net.named_modules())
    with torch.no_grad():
        expected = {"conv": net.conv(x)}
        expected["relu"] = net.relu(expected["conv"])
        expected["block.inner"] = modules["block.inner"](expected["relu"])
        expected["fc"] = net(x)
        with record_outputs(net, layers) as outputs:
            out = net(x)
    assert torch.equal(out, expected["fc"])
    assert list(outputs) == [n for n in ["conv", "relu", "block.inner", "fc"] if n in layers]
    for name in layers:
        assert torch.equal(outputs[name], expected[name])
    assert hook_count(net) == 0


def test_keeps_the_latest_output_of_repeated_passes() -> None:
    net = make_net().eval()
    a, b = torch.randn(1, 3, 8, 8), torch.randn(3, 3, 8, 8)
    with torch.no_grad(), record_outputs(net, ["fc"]) as outputs:
        net(a)
        first = outputs["fc"]
        net(b)
    assert first.shape == (1, 5) and outputs["fc"].shape == (3, 5)
    assert torch.equal(outputs["fc"], net(b).detach())


def test_outputs_keep_their_graph_for_training() -> None:
    net = make_net()
    with record_outputs(net, ["conv"]) as outputs:
        net(torch.randn(2, 3, 8, 8))
        outputs["conv"].pow(2).mean().backward()
    assert net.conv.weight.grad is not None and float(net.conv.weight.grad.abs().sum()) > 0


def test_transform_is_applied() -> None:
    net = make_net().eval()
    with torch.no_grad(), record_outputs(net, ["conv", "fc"], lambda o: o.shape[1]) as widths:
        net(torch.zeros(1, 3, 8, 8))
    assert widths == {"conv": 4, "fc": 5}


def test_first_tensor_of_tuple_outputs() -> None:
    net = nn.Sequential(OrderedDict([("pair", Pair())]))
    x = torch.arange(4.0)
    with record_outputs(net, ["pair"], first_tensor) as outputs:
        net(x)
    assert torch.equal(outputs["pair"], x * 2)
    assert torch.equal(first_tensor(x), x)


class Counting(nn.Module):
    """Counts how often it runs (to see that ``stop`` skips the rest of the network)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        self.calls += 1
        return x


@pytest.mark.parametrize("layers", [["conv"], ["relu", "conv"]])
def test_stop_skips_the_rest_of_the_network(layers: list[str]) -> None:
    net = make_net().eval()
    net.add_module("after", Counting())
    x = torch.randn(2, 3, 8, 8)
    reached_end = False
    with torch.no_grad(), record_outputs(net, layers, stop=True) as outputs:
        net(x)
        reached_end = True
    assert not reached_end and net.after.calls == 0
    assert set(outputs) == set(layers)
    assert torch.equal(outputs["conv"], net.conv(x).detach())
    assert hook_count(net) == 0
    net(x)  # the hooks are gone: the whole network runs again
    assert net.after.calls == 1


def test_nested_stop_is_not_swallowed_by_the_inner_block() -> None:
    net = make_net().eval()
    x = torch.randn(1, 3, 8, 8)
    after_inner = False
    with torch.no_grad(), record_outputs(net, ["conv"], stop=True) as outer:
        with record_outputs(net, ["fc"]) as inner:
            net(x)
        after_inner = True  # not reached: the outer recorder's stop ends both blocks
    assert not after_inner
    assert "conv" in outer and "fc" not in inner
    assert hook_count(net) == 0


def test_hooks_removed_after_an_exception() -> None:
    net = make_net()
    with pytest.raises(RuntimeError), record_outputs(net, ["conv", "fc"]):
        assert hook_count(net) == 2
        net(torch.randn(2, 5))  # wrong number of channels
    assert hook_count(net) == 0


@pytest.mark.parametrize("name, close", [("conv1", "'conv'"), ("block.iner", "'block.inner'"),
                                         ("fc2", "'fc'")])
def test_unknown_layer_is_a_config_error_with_close_matches(name: str, close: str) -> None:
    net = make_net()
    with pytest.raises(ConfigError, match="no layer") as err, record_outputs(net, ["conv", name]):
        pytest.fail("the block must not run")
    message = str(err.value)
    assert repr(name) in message and f"did you mean {close}" in message
    assert "\n" not in message and "top-level layers: conv, relu, block, pool, flat, fc" in message
    assert hook_count(net) == 0  # nothing registered before the error
