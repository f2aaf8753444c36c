"""One probe forward pass that tells, for every layer, its output shape, call count, receptive
field, layout (where its output holds the image grid), and whether a later in-place operation
overwrites its output."""

from __future__ import annotations

import torch
from torch import nn

from convscope.errors import RecordingError
from convscope.layers import LayerInfo, LayerTable
from convscope.layout import Layout, override, parse_layout
from convscope.receptive import ReceptiveFieldMode
from convscope.recorder import Recorder, select_tensor
from convscope.tokens import TokenLayout


def trace_layers(
    model: nn.Module,
    input_size: tuple[int, int],
    device: torch.device | str = "cpu",
    token_layout: TokenLayout | None = None,
    layouts: dict[str, object] | None = None,
) -> LayerTable:
    """Build the layer table of ``model`` from one forward pass of two (3, H, W) zero images (two,
    so that reshapes that fold windows into the batch show, and layers whose leading axis is
    not the image batch are known: ``LayerInfo.per_image``).

    Each layer's :class:`~convscope.layout.Layout` is detected from the pass (NCHW, NHWC,
    tokens with their prefix count); ``token_layout`` (the subject's) lays out token outputs the
    pass could not place; ``layouts`` (``{module glob: Layout | "NHWC" | "tokens+1" | None}``)
    overrides both, ``None`` meaning "record this output as it is". Shapes are those of the
    laid-out map (C, H, W)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(2, 3, *input_size, device=device, dtype=dtype)
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
        shape = rf = layout = None
        per_image = t is None or (t.dim() > 0 and t.shape[0] == x.shape[0])
        if t is not None:
            layout = _layout(mode, t, name, token_layout, layouts) if per_image else None
            shape = tuple((layout.to_map(t) if layout is not None else t).shape[1:])
            rf = mode.field_of(t)
        address = f"{name}#{call}" if ncalls[name] > 1 else name
        info = LayerInfo(
            name=address,
            module=name,
            call=call if ncalls[name] > 1 else None,
            type=types[name].__name__,
            shape=shape,
            rf=rf,
            layout=layout,
            per_image=per_image,
            traced=True,
            mutated=t is not None and t._version != version,
            order=order,
        )
        by_module.setdefault(name, []).append(info)
    infos: list[LayerInfo] = []
    for name in modules:  # module order; modules that never ran are listed without a shape
        infos.extend(by_module.get(name) or [LayerInfo(name, name, None, types[name].__name__, None, None)])
    return LayerTable(infos, types)


def _layout(mode, t, module, token_layout, layouts) -> Layout | None:
    """The layout of ``t``, the output of ``module``: the user's, else the detected one, else the
    subject's token layout where the tensor fits it and the pass did not follow it at all."""
    detected = mode.layout_of(t)
    if detected is None and token_layout is not None and mode.field_of(t) is None:
        detected = token_layout.layout_for(t)
    wanted = override(layouts, module)
    if wanted == "detect":
        return detected
    if isinstance(wanted, Layout) or wanted is None:
        layout = wanted
    else:  # a string: its grid is read from the output (also where nothing was detected)
        layout = parse_layout(wanted, detected.grid if detected is not None else (1, 1))
        layout = layout.adapt(t) if layout is not None else None
    if layout is not None and not layout.fits(t):
        raise RecordingError(f"layout {layout} given for {module!r} does not fit its output {tuple(t.shape)}")
    return layout
