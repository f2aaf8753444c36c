"""One probe forward pass that tells, for every layer, its output shape, call count, receptive
field, and whether a later in-place operation overwrites its output."""

from __future__ import annotations

import torch
from torch import nn

from convscope.errors import RecordingError
from convscope.layers import LayerInfo, LayerTable
from convscope.receptive import ReceptiveFieldMode
from convscope.recorder import Recorder, select_tensor
from convscope.tokens import TokenLayout


def trace_layers(
    model: nn.Module,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    token_layout: TokenLayout | None = None,
) -> LayerTable:
    """Build the layer table of ``model`` from one forward pass of a (1, 3, H, W) zero image."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(1, 3, *input_size, device=device, dtype=dtype)
    modules = [n for n, _ in model.named_modules() if n]
    types = {n: type(m) for n, m in model.named_modules() if n}
    mode = ReceptiveFieldMode(x)
    seen: list[tuple[str, int, torch.Tensor | None, int]] = []

    def on_output(address: str, call: int, output) -> None:
        try:
            t = select_tensor(output, None, address)
        except RecordingError:
            t = None
        seen.append((address.split("#")[0], call, t, t._version if t is not None else 0))

    with torch.no_grad(), Recorder(model, modules, keep=False, callback=on_output), mode:
        model(x)

    ncalls: dict[str, int] = {}
    for name, _, _, _ in seen:
        ncalls[name] = ncalls.get(name, 0) + 1
    by_module: dict[str, list[LayerInfo]] = {}
    for order, (name, call, t, version) in enumerate(seen):
        shape = rf = None
        if t is not None:
            shaped = token_layout.to_map(t) if token_layout is not None else t
            shape = tuple(shaped.shape[1:])
            rf = mode.field_of(t)
        address = f"{name}#{call}" if ncalls[name] > 1 else name
        info = LayerInfo(
            name=address,
            module=name,
            call=call if ncalls[name] > 1 else None,
            type=types[name].__name__,
            shape=shape,
            rf=rf,
            mutated=t is not None and t._version != version,
            order=order,
        )
        by_module.setdefault(name, []).append(info)
    infos: list[LayerInfo] = []
    for name in modules:  # module order; modules that never ran are listed without a shape
        infos.extend(by_module.get(name) or [LayerInfo(name, name, None, types[name].__name__, None, None)])
    return LayerTable(infos, types)
