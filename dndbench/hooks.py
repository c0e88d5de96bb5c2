"""Forward hooks as a context manager: record what chosen layers of a network output.

    with record_outputs(net, ["layer3", "layer4"]) as outputs:
        net(images)
    outputs["layer4"]  # the tensor layer4 returned

Every site that needs a layer's output (the activation stage, unit counting, MILAN's pyramid
encoder, the toy network's auxiliary loss) goes through :func:`record_outputs`, so hooks are always
removed, also when the forward pass fails.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from dndbench.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once every recorded layer has run."""

    def __init__(self, token: object) -> None:
        super().__init__("forward pass stopped once the recorded layers had run")
        self.token = token


def first_tensor(output: Any) -> Any:
    """A layer's output tensor: the first element of a tuple or list output (transformer blocks)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def find_modules(model: "nn.Module", layers: Iterable[str]) -> dict[str, "nn.Module"]:
    """The submodules of ``model`` named ``layers``; a ConfigError names close matches otherwise."""
    modules = dict(model.named_modules())
    found: dict[str, "nn.Module"] = {}
    for name in layers:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            top = [n for n in modules if n and "." not in n]
            raise ConfigError(f"the network has no layer {name!r}{hint} "
                              f"(top-level layers: {', '.join(top) or 'none'})")
        found[name] = modules[name]
    return found


@contextmanager
def record_outputs(model: "nn.Module", layers: Iterable[str],
                   transform: Callable[[Any], Any] | None = None, *,
                   stop: bool = False) -> Iterator[dict[str, Any]]:
    """Record the outputs of ``layers`` (module names of ``model``) while the block runs.

    Yields a dict layer -> that layer's latest output (``transform(output)`` when given), filled in
    the order the layers run and overwritten by each later forward pass.  The hooks are removed
    when the block ends, also on an exception.

    With ``stop`` the forward pass is cut short as soon as every layer has run (the rest of the
    network is skipped): the block ends there and execution continues after the ``with``
    statement, so such a block should hold a single forward pass.
    """
    names = list(dict.fromkeys(layers))
    modules = find_modules(model, names)
    outputs: dict[str, Any] = {}
    token = object()

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            outputs[name] = output if transform is None else transform(output)
            if stop and len(outputs) == len(names):
                raise _StopForward(token)
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield outputs
    except _StopForward as exc:
        if exc.token is not token:  # another recorder's stop: not ours to swallow
            raise
    finally:
        for handle in handles:
            handle.remove()
