"""Options and error handling shared by every command."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import ProgressColumn
from rich.text import Text

DEFAULT_MODEL = "efficientnet_lite0"
MODEL_HELP = "efficientnet_lite0 (offline default), torchvision:NAME, timm:NAME, or a checkpoint path"
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP)]
DATA_HELP = (
    "images: a folder, .tar(.gz), list.txt, image files, sample:NAME (bundled photo) or "
    "convscope:samples (all of them and their crops)"
)
DataOpt = Annotated[list[str] | None, typer.Option("--data", help=DATA_HELP + "; repeatable")]
DatasetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data", help=DATA_HELP + "; one collection, or several files [default: convscope:samples]"
    ),
]
LayersOpt = Annotated[
    str, typer.Option("--layers", help="comma-separated layers, globs, 'stages' or 'all-conv'")
]
TargetOpt = Annotated[
    str,
    typer.Option(
        "--target",
        help="top | class:N | class:NAME | prob:N | prob:NAME | LAYER:UNIT[@y,x] "
        "(a bare N means class:N; NAME in any case, _ for spaces)",
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue the interrupted work in --out")]
WeightsOpt = Annotated[
    str,
    typer.Option("--weights", help="'default' (pretrained), 'none' (random init) or a local weights file"),
]
ArchOpt = Annotated[
    str | None, typer.Option("--arch", help="architecture of a checkpoint file, e.g. torchvision:resnet18")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")]
SeedOpt = Annotated[int, typer.Option("--seed", help="random seed, for reproducible results")]
EngineOpt = Annotated[str, typer.Option("--engine", help="local, or ray (shards over Ray actors)")]
AddressOpt = Annotated[str | None, typer.Option("--address", help="Ray cluster address, e.g. auto")]
RayWorkersOpt = Annotated[int, typer.Option("--ray-workers", min=1, help="Ray actors")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="image decoding processes [default: sized to the machine]"),
]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="fp32, bf16 or fp16 (autocast; effect on results in docs/scale.md)")
]
ChannelsLastOpt = Annotated[
    bool | None,
    typer.Option("--channels-last/--no-channels-last", help="NHWC memory layout [default: on CUDA only]"),
]
DecodeOpt = Annotated[
    str, typer.Option("--decode", help="cpu (PIL, in the workers) or device (JPEGs decoded on --device)")
]

# The attribution methods' settings, one block for `convscope explain` and `convscope evaluate`:
# each unset (None) leaves every method its own default (occlusion fills gray, RISE, KernelSHAP
# and LIME zero; SmoothGrad draws 50 samples, KernelSHAP and LIME 500), and method_settings
# passes on only those given.
WindowOpt = Annotated[int | None, typer.Option("--window", help="occlusion window, px [default: 32]")]
StrideOpt = Annotated[int | None, typer.Option("--stride", help="occlusion stride, px [default: 16]")]
FillOpt = Annotated[
    str | None,
    typer.Option(
        "--fill",
        help="what hidden pixels become: occlusion gray zero mean blur noise; rise, kernel_shap, "
        "lime zero gray mean blur [default: each method's own: occlusion gray, the others zero]",
    ),
]
SamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--samples", help="SmoothGrad noisy copies; kernel_shap, lime perturbations [default: 50; 500]"
    ),
]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="integrated-gradients steps [default: 50]")]
MasksOpt = Annotated[int | None, typer.Option("--masks", help="RISE random masks [default: 4000]")]
CellsOpt = Annotated[int | None, typer.Option("--cells", help="RISE mask grid, cells per side [default: 7]")]
SegmentsOpt = Annotated[
    int | None, typer.Option("--segments", help="kernel_shap, lime: SLIC superpixels per image [default: 50]")
]
CompositeOpt = Annotated[
    str | None,
    typer.Option(
        "--composite",
        help="LRP composite: epsilon_plus epsilon_gamma_box epsilon_alpha2_beta1 epsilon_plus_flat "
        "epsilon_alpha2_beta1_flat epsilon gamma alpha_beta zplus [default: epsilon_plus]",
    ),
]
EvenOverlapOpt = Annotated[
    bool, typer.Option("--even-overlap", help="Zeiler-Fergus: remove the checkerboard of strided layers")
]


def method_settings(**given) -> dict:
    """The attribution settings of a command line that were given (not None, flags not False):
    the ones passed on, so that each method keeps its own default for the rest."""
    return {k: v for k, v in given.items() if v is not None and v is not False}


def make_accel(precision: str = "fp32", channels_last: bool | None = None, decode: str = "cpu"):
    """The :class:`~convscope.accel.Accel` the speed options describe."""
    from convscope.accel import Accel

    return Accel(precision=precision, channels_last=channels_last, decode=decode)


def rate_text(rate: float) -> str:
    """A rate per second with one decimal, or three where it is under 1 (slow work, a few
    seconds per map, would otherwise read 0.0)."""
    return f"{rate:.1f}" if rate >= 1 or rate == 0 else f"{rate:.3f}"


class _Rate(ProgressColumn):
    """Rich column: done per second, e.g. ``12.3 img/s``."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{rate_text(speed):>6} {self.unit}/s" if speed else f"   ... {self.unit}/s")


def progress_interval() -> float:
    """Seconds between the plain progress lines written when stderr is not a terminal
    (``CONVSCOPE_PROGRESS_INTERVAL``, default 10)."""
    from convscope.errors import UserInputError

    text = os.environ.get("CONVSCOPE_PROGRESS_INTERVAL", "").strip()
    if not text:
        return 10.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserInputError(f"CONVSCOPE_PROGRESS_INTERVAL must be a number of seconds >= 0, not {text!r}")
    return value


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressLines:
    """Progress as plain lines on a stream that is not a terminal (a log file, a pipe, CI): at
    most one line every ``interval`` seconds, ``LABEL: done/total (pct), rate, ETA``, and a last
    line when the work is complete if any line was written before."""

    def __init__(self, label: str, total: int | None, unit: str, file, interval: float):
        import time

        self.label, self.total, self.unit, self.file, self.interval = label, total, unit, file, interval
        self.clock = time.monotonic
        self.started: float | None = None
        self.base = 0.0  # done at the first update (work resumed from a checkpoint)
        self.last = 0.0
        self.lines = 0
        self.done = 0.0
        self.note: str | None = None
        self.finished = False

    def line(self) -> str:
        now = self.clock()
        elapsed = now - (now if self.started is None else self.started)
        parts = []
        done = int(self.done) if self.done == int(self.done) else round(self.done, 1)
        if self.total:
            parts.append(f"{done}/{self.total} ({100 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{done} done")
        rate = (self.done - self.base) / elapsed if elapsed > 0 else 0.0
        parts.append(f"{rate_text(rate)} {self.unit}/s")
        if not self.total:
            parts.append(f"elapsed {_duration(elapsed)}")
        elif self.done >= self.total:
            parts.append(f"took {_duration(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        else:
            parts.append("ETA unknown")
        if self.note:
            parts.append(self.note)
        return f"{self.label}: " + ", ".join(parts)

    def update(self, done=None, total=None, note: str | None = None) -> None:
        now = self.clock()
        if total is not None and total != self.total:
            if self.started is not None:  # a new phase (dissection's second pass): its own rate
                self.started, self.finished, self.lines = None, False, 0
            self.total = total
        if done is not None:
            self.done = done
        if self.started is None:
            self.started = self.last = now
            self.base = self.done
        if note is not None:
            self.note = note
        complete = bool(self.total) and self.done >= self.total
        if complete and self.lines and not self.finished:
            self.finished = True
            self._write()
        elif not complete and now - self.last >= self.interval:
            self._write()

    def _write(self) -> None:
        self.last = self.clock()
        self.lines += 1
        print(self.line(), file=self.file, flush=True)

    def stop(self) -> None:
        pass


class _RichProgress:
    """A rich progress bar that starts on its first update (so that input checks fail before
    it appears)."""

    def __init__(self, label: str, total: int | None, unit: str, console, extra, remaining: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(unit),
            *extra,
            *([TimeRemainingColumn()] if remaining else []),
            TextColumn("{task.description}"),
        ]
        self.bar = Progress(*columns, console=console)
        self.task = self.bar.add_task("", total=total)

    def update(self, done=None, total=None, note: str | None = None) -> None:
        if not self.bar.live.is_started:
            self.bar.start()
        fields = {"completed": done, "total": total, "description": note}
        self.bar.update(self.task, **{k: v for k, v in fields.items() if v is not None})

    def stop(self) -> None:
        self.bar.stop()


def progress_bar(
    label: str, total: int | None, console=None, extra=(), remaining: bool = True, unit: str = "it"
):
    """The one progress display of the CLI, on stderr, and its ``progress(done, total, note=None)``
    callback for compute functions (which never print). On a terminal: a rich bar (label, bar,
    done/total, rate in ``unit``/s, ``extra`` columns, time left, note) that shows on its first
    update, so that input checks fail before it appears. Elsewhere (a log, a pipe, CI): plain
    lines with done/total, rate and ETA every ``CONVSCOPE_PROGRESS_INTERVAL`` seconds (10).
    ``done`` may be fractional. Stop it with ``bar.stop()``."""
    from rich.console import Console

    console = console or Console(stderr=True)
    if console.is_terminal:
        bar = _RichProgress(label, total, unit, console, extra, remaining)
    else:
        bar = ProgressLines(label, total, unit, console.file, progress_interval())
    return bar, bar.update


def load_subject(model: str, weights: str = "default", arch: str | None = None, device: str = "cpu"):
    from convscope.errors import UserInputError
    from convscope.zoo import load

    if model.startswith("sample:") or Path(model).suffix.lower() in (
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
    ):
        raise UserInputError(
            f"{model!r} is an image, not a model: the model comes first (or is left "
            "out for efficientnet_lite0) and images go in --data"
        )

    return load(model, weights=weights, arch=arch, device=device)


def debug() -> bool:
    """Show full tracebacks (CONVSCOPE_DEBUG=1)."""
    return os.environ.get("CONVSCOPE_DEBUG", "") not in ("", "0")


def _is_collection(item: str) -> bool:
    """A folder, an archive, a list file or ``convscope:samples``: many images, not one."""
    import tarfile

    path = Path(item)
    if item == "convscope:samples" or path.is_dir() or path.suffix in (".txt", ".lst"):
        return True
    return path.name.endswith((".tar", ".tar.gz", ".tgz")) or (path.is_file() and tarfile.is_tarfile(path))


def read_images(items: list[str]):
    """``(name, PIL image)`` for each image that ``--data`` names: image files, ``sample:NAME``
    (a bundled photo, ``sample:chelsea/top-left`` for a crop), or folders, archives, list files
    and ``convscope:samples``, which give all their images (unreadable ones are skipped and
    counted on stderr)."""
    from convscope.errors import UserInputError
    from convscope.imageops import read_image
    from convscope.inputs.samples import SAMPLE_NAMES, sample_view
    from convscope.inputs.sources import open_images

    if not items:
        raise UserInputError("no images given: name them with --data (files, a folder, sample:NAME)")
    out, skipped = [], []
    for item in items:
        if item.startswith("sample:"):
            name = item.split(":", 1)[1]
            if name.split("/")[0] not in SAMPLE_NAMES:
                raise UserInputError(f"unknown sample {name!r}; have {', '.join(SAMPLE_NAMES)}")
            out.append((name.replace("/", "_"), sample_view(name)))
        elif _is_collection(item):
            source = open_images(item)
            for i, record in enumerate(source.records):
                try:
                    img = source.read(i)
                except Exception as e:
                    skipped.append((record.name, str(e)))
                    continue
                out.append((Path(record.name).with_suffix("").as_posix().replace("/", "_"), img))
        else:
            path = Path(item)
            if not path.exists():
                raise UserInputError(f"image {item!r} does not exist")
            try:
                out.append((path.stem, read_image(path)))
            except Exception as e:
                raise UserInputError(f"cannot read {item}: {e}") from None
    if skipped:
        from rich.console import Console

        from convscope.inputs.images import SkipReport

        Console(stderr=True).print(SkipReport(skipped).summary(), highlight=False)
    if not out:
        raise UserInputError(f"no readable image in {', '.join(items)}")
    return out


def open_data(
    items: list[str] | None, transform=None, pattern: str | None = None, default: str = "convscope:samples"
):
    """The image source ``--data`` names, for commands that go over a dataset: one folder,
    .tar(.gz), list.txt or ``convscope:samples``; ``sample:NAME`` (a glob too: ``sample:c*``)
    for bundled photos; or several image files."""
    from convscope.errors import UserInputError
    from convscope.inputs.sources import open_images

    items = list(items or [default])
    if any(i.startswith("sample:") for i in items):
        if len(items) > 1 or pattern:
            raise UserInputError(
                "sample:NAME goes alone in --data (without --pattern); use a glob "
                "like sample:c* for several bundled photos"
            )
        return open_images("convscope:samples", transform=transform, pattern=items[0][len("sample:") :])
    if len(items) == 1:
        return open_images(items[0], transform=transform, pattern=pattern)
    if any(_is_collection(i) for i in items):
        raise UserInputError("--data takes one folder, archive or list file, or several image files")
    return open_images(items, transform=transform, pattern=pattern)


def one_layer(spec: str, option: str = "--layers") -> str:
    """The single layer a command that works on one layer was given."""
    from convscope.errors import UserInputError

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) != 1:
        raise UserInputError(f"{option} names one layer here, not {spec!r}")
    return names[0]


def target_spec(text: str | None):
    """A ``--target`` string in the one target grammar (``top``, ``class:N``, ``prob:N``,
    ``LAYER:UNIT[@y,x]``); a bare number ``N`` means ``class:N``."""
    if text is None:
        return None
    text = text.strip()
    return f"class:{text}" if text.isdigit() else text


def parse_classes(subject, text: str) -> list[int]:
    """``--classes``: indices, ranges and class names, ``"285,967"``, ``"0-3"``,
    ``"zebra,Egyptian cat"`` (names in any case, ``_`` for spaces; a wrong one lists the
    closest)."""
    import re

    from convscope.errors import UserInputError

    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            out += [subject.class_index(c) for c in range(int(m[1]), int(m[2]) + 1)]
        elif part:
            out.append(subject.class_index(part))
    if not out:
        raise UserInputError("no classes given")
    return out


def parse_range(text: str) -> list[int]:
    """``"0-7,12,20-23"`` -> [0, ..., 7, 12, 20, ..., 23]."""
    from convscope.errors import UserInputError

    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise UserInputError(f"{text!r} is not a list of numbers and ranges like 0-7,12") from None
    if not out:
        raise UserInputError("no numbers given")
    return out


def writes_atlas(param: str):
    """Decorate a command that writes the atlas folder named by its argument ``param``: the
    atlas's writer lock is held for the whole command, so that a second writer fails at once
    with a one-line error naming the first (readers such as ``topk`` and ``serve`` need none)."""
    import functools

    def wrap(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            from convscope.atlas import Atlas

            with Atlas(kwargs[param]).lock():
                return command(*args, **kwargs)

        return run

    return wrap


INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT)


@contextlib.contextmanager
def resumable(out, *bars):
    """Run a resumable command's work: the progress ``bars`` (anything with ``stop()``) are
    stopped at the end; on Ctrl-C one line says how to continue the work in ``out`` and the
    command exits with code 130."""
    try:
        yield
    except KeyboardInterrupt:
        for bar in bars:  # first, so that no bar redraws over the line
            bar.stop()
        from rich.console import Console

        Console(stderr=True).print(
            f"interrupted; continue with the same command and --resume ({out})",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(INTERRUPTED) from None
    finally:
        for bar in bars:
            bar.stop()
