"""``convscope attack`` and ``convscope fool``: adversarial perturbations and fooling images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convscope.cli.common import (
    DEFAULT_MODEL,
    ArchOpt,
    DataOpt,
    DeviceOpt,
    ModelArg,
    SeedOpt,
    WeightsOpt,
    load_subject,
    parse_classes,
    progress_bar,
    read_images,
    target_spec,
)


def _fraction(text: str) -> float:
    """``"2/255"`` or ``"0.01"`` -> float."""
    from convscope.errors import UserInputError

    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UserInputError(f"{text!r} is not a number like 2/255 or 0.01") from None


def attack(
    model: ModelArg = DEFAULT_MODEL,
    images: Annotated[
        list[str] | None, typer.Argument(hidden=True, help="old spelling of --data: images after the model")
    ] = None,
    data: DataOpt = None,
    method: Annotated[str, typer.Option("--method", help="pgd, pgd-l2, fgsm or szegedy")] = "pgd",
    eps: Annotated[str, typer.Option("--eps", help="budget in pixel units, e.g. 2/255")] = "2/255",
    alpha: Annotated[str | None, typer.Option("--alpha", help="step size (default eps/4)")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 10,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="the class to push the images to (targeted attack): N, NAME, class:N or class:NAME",
        ),
    ] = None,
    random_start: Annotated[bool, typer.Option("--random-start")] = False,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("attack-out"),
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Adversarial perturbation of images: a PNG panel per image (original, perturbation,
    adversarial, with labels and confidences)."""
    from convscope.adversarial import fgsm, minimal, pgd
    from convscope.errors import UserInputError

    subject = load_subject(model, weights, arch, device)
    pics = read_images([*(images or []), *(data or [])])
    imgs = [img for _, img in pics]
    target = _target_class(subject, target)
    e = _fraction(eps)
    a = _fraction(alpha) if alpha else None
    if method in ("pgd", "pgd-l2"):
        res = pgd(
            subject,
            imgs,
            eps=e,
            alpha=a,
            steps=steps,
            norm="l2" if method == "pgd-l2" else "linf",
            target=target,
            random_start=random_start,
            seed=seed,
        )
    elif method == "fgsm":
        res = fgsm(subject, imgs, eps=e, target=target)
    elif method == "szegedy":
        if target is None:
            raise UserInputError("szegedy needs --target")
        parts = [minimal(subject, img, target, steps=max(steps, 50), seed=seed) for img in imgs]
        res = parts[0] if len(parts) == 1 else _join(parts)
    else:
        raise UserInputError("--method must be pgd, pgd-l2, fgsm or szegedy")
    o = Console()
    for i, (name, _) in enumerate(pics):
        png = res.to_png(out / f"{name}_{method}.png", i)
        o.print(
            f"{name:<18} {res.describe(i, 'before')} -> {res.describe(i)}   "
            f"Linf {res.linf[i]:.2f}/255  L2 {res.l2[i]:.3f}  "
            f"{'success' if res.success[i] else 'failed'}  ({png})",
            soft_wrap=True,
        )
    if not res.success.all():
        raise typer.Exit(1)


def _target_class(subject, text: str | None) -> int | None:
    """The class index of ``--target`` (the target grammar; an attack targets a class, so a
    bare class name is one too)."""
    from convscope.attribution import resolve_target
    from convscope.errors import UserInputError

    if text is None:
        return None
    if ":" not in text and text.strip() != "top":
        return subject.class_index(text)  # N or NAME, with close matches
    tgt = resolve_target(subject, target_spec(text))
    if tgt.kind not in ("class", "prob") or tgt.top or len(tgt.classes) != 1:
        raise UserInputError(
            f"--target {text!r}: an attack's target is a class: N, NAME, class:N or class:NAME"
        )
    return int(tgt.classes[0])


def _join(parts):
    import numpy as np

    first = parts[0]
    first.original = np.concatenate([p.original for p in parts])
    first.adversarial = np.concatenate([p.adversarial for p in parts])
    first.linf = np.concatenate([p.linf for p in parts])
    first.l2 = np.concatenate([p.l2 for p in parts])
    first.before = tuple(np.concatenate([p.before[k] for p in parts]) for k in range(2))
    first.after = tuple(np.concatenate([p.after[k] for p in parts]) for k in range(2))
    first.success = np.concatenate([p.success for p in parts])
    return first


def fool(
    model: ModelArg = DEFAULT_MODEL,
    classes: Annotated[
        str,
        typer.Option("--classes", help="classes to fool the model into, e.g. 285, 285,967 or zebra,espresso"),
    ] = "285",
    method: Annotated[str, typer.Option("--method", help="gradient, evolve or cppn")] = "gradient",
    n: Annotated[int, typer.Option("--n", min=1, help="images")] = 1,
    steps: Annotated[int, typer.Option("--steps", help="gradient steps")] = 60,
    generations: Annotated[int, typer.Option("--generations", help="evolve/cppn generations")] = 200,
    population: Annotated[int, typer.Option("--population")] = 16,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("fool-out"),
    weights: WeightsOpt = "default",
    arch: ArchOpt = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
) -> None:
    """Fooling images: unrecognisable images the model assigns to each of --classes."""
    from convscope.adversarial import fool as run

    subject = load_subject(model, weights, arch, device)
    o = Console()
    for cls in parse_classes(subject, classes):
        bar, progress = progress_bar(f"{method} {cls}", None, unit="steps")
        try:
            res = run(
                subject,
                cls,
                method,
                n=n,
                seed=seed,
                steps=steps,
                generations=generations,
                population=population,
                elite=max(1, population // 4),
                progress=progress,
            )
        finally:
            bar.stop()
        png = res.to_png(out / f"fool_{cls}_{method}.png")
        for c, t in zip(res.confidence, res.top1):
            o.print(f"p({subject.label(cls)}) = {c:.4f}; top-1: {t}")
        o.print(f"wrote {png}")
