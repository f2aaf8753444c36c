"""Concept dictionaries: streaming collection speed, fitting time against the reference libraries,
and memory against dataset size, in one run.

    python benchmarks/concepts.py [--quick] [--images 512] [--layers bn2,blocks.3] [--device cpu]
                                  [--samples 20000] [--n 32] [--sae-steps 1000] [--out FILE]

Images: the photos bundled with scikit-image plus CIFAR-10 test JPEGs (``../shared/data/
cifar10-jpg.tar.gz``, an equal number per class, extracted to a temporary folder), decoded and
resized by the model's own transform. Model: ``convscope.load()`` (the default model).

1. **Collection**: images/s (and rows/s: ``per_image`` rows per image) of
   :func:`~convscope.concepts.activations.collect_activations` from the folder at each layer,
   as a ratio to the bare forward pass (``model(x)`` on preloaded batches, inference mode) and to
   the data path + forward pass (the same :class:`~convscope.inputs.batches.Batches` and workers,
   then ``model(x)``): interleaved repeats, median.
2. **Fitting**, on activations collected at the first layer: our NMF (``fit_dictionary``,
   scikit-learn underneath) vs scikit-learn's ``NMF`` called directly at equal settings, with
   both reconstruction errors; our torch NMF encoder (``ConceptSet.encode``: coordinate descent
   on all rows at once) vs ``NMF.transform`` on held-out rows; our TopK SAE vs ``overcomplete``'s
   ``TopKSAE`` at the same steps, batch, learning rate and k, with both errors.
3. **Memory**: a fresh process per size collects from N and 4N images with the same
   ``max_samples`` (``workers=0``, so every allocation is in that process): the peak RSS during
   the collection (the kernel's peak reset after loading and a one-batch warm-up), its growth
   over the RSS before it, and tracemalloc's peak (Python and NumPy allocations).

Prints a markdown table per part and writes the JSON to ``--out``. ``--quick`` is a smoke run
(32 photos, 3-4 minutes on 2 busy cores; its JSON goes to /tmp). The full run (512 photos, 3
repeats, NMF of ~6,500 x 1,280 rows into 32 concepts, SAE of 1,000 steps, memory at 256 and 1,024
images) is estimated at 10-15 minutes on 2 idle CPU cores from the quick run's timings (not run in
full yet); the NMF fits dominate, and how long they take depends on how soon they converge.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR = SHARED / "data" / "cifar10-jpg.tar.gz"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "cat")


def make_folder(root: Path, n: int, cifar: Path = CIFAR) -> Path:
    """``n`` real photos in ``root``: scikit-image's bundled photos, then CIFAR-10 test JPEGs, an
    equal number per class (the folder is reused when it already holds them)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    if len(list(root.glob("*.jpg"))) >= n:
        return root
    have = 0
    try:
        from skimage import data

        for name in PHOTOS:
            if have >= n:
                break
            try:
                pixels = getattr(data, name)()
            except Exception:  # a photo that scikit-image would have to download
                continue
            if pixels.ndim == 2:
                pixels = np.stack([pixels] * 3, axis=2)
            Image.fromarray(np.asarray(pixels[..., :3], np.uint8)).save(
                root / f"a-photo-{name}.jpg", quality=92
            )
            have += 1
    except ImportError:
        pass
    need = n - have
    per_class = -(-need // 10)
    taken: dict[str, int] = {}
    with tarfile.open(cifar) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] != "test" or need <= 0:
                continue
            if taken.get(parts[1], 0) >= per_class:
                continue
            taken[parts[1]] = taken.get(parts[1], 0) + 1
            (root / f"cifar-{parts[1]}-{parts[2]}").write_bytes(tf.extractfile(m).read())
            need -= 1
    return root


def median_rate(times: list[float], count: int) -> float:
    return count / statistics.median(times)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def collection(args, subject, folder: Path) -> list[dict]:
    """Part 1: images/s of the collection vs the bare forward pass and vs data path + forward."""
    from convscope.concepts import collect_activations
    from convscope.inputs.batches import Batches
    from convscope.inputs.sources import open_images
    from convscope.inputs.workers import batch_bytes, resolve_workers

    dev = subject.device
    source = open_images(folder, transform=subject.transform)
    n = len(source)
    bs = args.batch_size
    workers = resolve_workers(None, dev, batch_bytes(bs, subject.input_size, "cpu"))
    images = torch.stack([source[i][0] for i in range(n)])
    preloaded = [images[j : j + bs] for j in range(0, n, bs)]

    def bare() -> float:
        sync(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in preloaded:
                subject.model(x.to(dev))
        sync(dev)
        return time.perf_counter() - t0

    def data_path() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for batch in Batches(source, bs, workers, pin_memory=dev.type == "cuda", device=dev):
                subject.model(batch.images.to(dev))
        sync(dev)
        return time.perf_counter() - t0

    def collect(layer: str) -> float:
        t0 = time.perf_counter()
        collect_activations(
            subject, folder, layer, per_image=args.per_image, max_samples=args.samples, batch_size=bs
        )
        sync(dev)
        return time.perf_counter() - t0

    layers = args.layers.split(",")
    # warm-up: one backward pass (forwards run slower before it on this CPU), one of each pass
    x = torch.randn(2, 3, *subject.input_size, device=dev, requires_grad=True)
    subject.model(x).sum().backward()
    bare(), data_path(), [collect(layer) for layer in layers]
    times: dict[str, list[float]] = {"bare": [], "data": [], **{layer: [] for layer in layers}}
    for _ in range(args.repeats):
        times["bare"].append(bare())
        times["data"].append(data_path())
        for layer in layers:
            times[layer].append(collect(layer))
    rate_bare, rate_data = median_rate(times["bare"], n), median_rate(times["data"], n)
    rows = [
        {"what": "bare forward (preloaded, inference mode)", "img_s": rate_bare},
        {"what": "data path + forward (Batches, same workers)", "img_s": rate_data},
    ]
    for layer in layers:
        rate = median_rate(times[layer], n)
        ratios = [times["bare"][i] / times[layer][i] for i in range(args.repeats)]
        rows.append(
            {
                "what": f"collect_activations at {layer}",
                "img_s": rate,
                "rows_s": rate * args.per_image,
                "vs_bare": rate / rate_bare,
                "vs_bare_range": [min(ratios), max(ratios)],
                "vs_data_path": rate / rate_data,
            }
        )
    return rows


def best_of(run, repeats: int):
    """(shortest time in seconds, result) of ``repeats`` calls of ``run``."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return best, out


def relative_error(x: np.ndarray, rebuilt: np.ndarray) -> float:
    return float(np.linalg.norm(x - rebuilt) / np.linalg.norm(x))


def fitting(args, subject, folder: Path, layer: str) -> list[dict]:
    """Part 2: fitting and encoding times against scikit-learn and overcomplete."""
    from sklearn.decomposition import NMF

    from convscope.concepts import collect_activations
    from convscope.concepts.dictionary import fit_dictionary

    acts = collect_activations(
        subject, folder, layer, per_image=args.per_image, max_samples=args.samples, seed=0
    )
    x = acts.x
    cut = int(0.8 * len(x))
    train, held = x[:cut], x[cut:]
    data, held_np = train.double().numpy(), held.double().numpy()
    rows = []
    settings = dict(init=None, solver="cd", beta_loss="frobenius", max_iter=args.nmf_iter, tol=1e-4)
    settings.update(alpha_W=0.0, alpha_H="same", l1_ratio=0.0)

    def fit_ours():
        return fit_dictionary(train, "nmf", args.n, layer=layer, seed=0, max_iter=args.nmf_iter)

    def fit_ref():
        ref = NMF(n_components=args.n, random_state=0, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the budget, as in ours
            return ref, ref.fit_transform(data)

    # warm-up (BLAS and scikit-learn's thread pools start on the first fit), then one fit each (they
    # are long; ours is scikit-learn's fit plus the result's statistics)
    fit_dictionary(train[:64], "nmf", 2, layer=layer, seed=0, max_iter=5)
    t_ours, ours = best_of(fit_ours, 1)
    t_ref, (ref, w_ref) = best_of(fit_ref, 1)
    err_ref = relative_error(data, w_ref @ ref.components_)
    shape = f"{len(train)} x {train.shape[1]} -> {args.n}"
    rows.append(
        {
            "what": f"NMF fit ({shape}, {args.nmf_iter} iterations at most)",
            "ours_s": t_ours,
            "reference": "sklearn NMF.fit_transform",
            "reference_s": t_ref,
            "time_ratio": t_ours / t_ref,
            "ours_error": ours.error,
            "reference_error": err_ref,
        }
    )

    # the encoder: the same dictionary (ours is scikit-learn's fit at equal settings), held-out rows
    same = float(np.abs(ours.dictionary.numpy() - ref.components_.astype(np.float32)).max())
    ours.encode(held[:8])  # warm-up
    t_enc, codes = best_of(lambda: ours.encode(held).double().numpy(), args.fit_repeats)
    t_tr, codes_ref = best_of(lambda: ref.transform(held_np), args.fit_repeats)
    rows.append(
        {
            "what": f"NMF encode ({len(held)} held-out rows, CPU)",
            "ours_s": t_enc,
            "reference": "sklearn NMF.transform",
            "reference_s": t_tr,
            "time_ratio": t_enc / t_tr,
            "ours_error": relative_error(held_np, codes @ ref.components_),
            "reference_error": relative_error(held_np, codes_ref @ ref.components_),
            "max_dictionary_difference": same,
        }
    )
    if subject.device.type != "cpu":
        basis = ours.basis(subject.device)
        basis.rows(held[:8])
        sync(subject.device)
        t0 = time.perf_counter()
        dcodes = basis.rows(held).cpu().double().numpy()
        t_dev = time.perf_counter() - t0
        rows.append(
            {
                "what": f"NMF encode ({len(held)} held-out rows, {subject.device})",
                "ours_s": t_dev,
                "reference": "sklearn NMF.transform (CPU)",
                "reference_s": t_tr,
                "time_ratio": t_dev / t_tr,
                "ours_error": relative_error(held_np, dcodes @ ref.components_),
                "reference_error": relative_error(held_np, codes_ref @ ref.components_),
            }
        )
    rows.append(sae_row(args, x, subject.device))
    return rows


def sae_row(args, x: torch.Tensor, device) -> dict:
    """Our TopK SAE vs overcomplete's TopKSAE at the same step budget, batch, lr and k."""
    from convscope.concepts.dictionary import fit_dictionary

    n_atoms, k, steps, bs, lr = args.sae_atoms, args.sae_k, args.sae_steps, args.sae_batch, 1e-3
    t0 = time.perf_counter()
    ours = fit_dictionary(
        x, "sae-topk", n_atoms, seed=0, device=device, k=k, steps=steps, lr=lr, batch_size=bs
    )
    sync(device)
    t_ours = time.perf_counter() - t0
    row = {
        "what": f"TopK SAE ({len(x)} x {x.shape[1]} -> {n_atoms}, k={k}, {steps} steps of {bs})",
        "ours_s": t_ours,
        "reference": "overcomplete TopKSAE + train_sae",
        "ours_error": ours.error,
    }
    try:
        import matplotlib
        import matplotlib.cm

        # overcomplete 0.3.0 calls matplotlib.cm.get_cmap at import, which matplotlib 3.9 removed
        if not hasattr(matplotlib.cm, "get_cmap"):
            matplotlib.cm.get_cmap = lambda name=None, lut=None: matplotlib.colormaps[name]
        from overcomplete import sae as osae
    except ImportError as e:
        row["reference_s"] = None
        row["note"] = f"overcomplete not available ({e})"
        return row
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xd = x.to(device)
    t0 = time.perf_counter()
    theirs = osae.TopKSAE(x.shape[1], n_atoms, top_k=k, device=str(device))
    opt = torch.optim.Adam(theirs.parameters(), lr=lr)
    batches = (xd[torch.randint(0, len(x), (bs,), generator=g).to(device)] for _ in range(steps))
    osae.train_sae(
        theirs, batches, lambda a, a_hat, *_: (a_hat - a).pow(2).mean(), opt,
        nb_epochs=1, clip_grad=None, monitoring=0, device=str(device),
    )  # fmt: skip
    sync(device)
    t_ref = time.perf_counter() - t0
    theirs.eval()
    with torch.no_grad():
        rebuilt = torch.cat([theirs(xd[i : i + 8192])[2].cpu() for i in range(0, len(x), 8192)])
    row.update(
        reference_s=t_ref,
        time_ratio=t_ours / t_ref,
        reference_error=relative_error(x.double().numpy(), rebuilt.double().numpy()),
    )
    return row


def memory_child(args) -> None:
    """One size of part 3, in its own process: print a JSON line."""
    import convscope
    from convscope.concepts import collect_activations

    subject = convscope.load(device=args.device)
    folder = Path(args.folder)
    # warm-up on one full batch, so the growth below is what the dataset size adds
    warm = range(min(args.batch_size, args.memory_child))
    collect_activations(subject, folder, args.layers.split(",")[0], max_samples=16, indices=warm, workers=0)
    reset_peak_rss()
    base = rss_now()
    tracemalloc.start()
    t0 = time.perf_counter()
    acts = collect_activations(
        subject,
        folder,
        args.layers.split(",")[0],
        per_image=args.per_image,
        max_samples=args.samples,
        batch_size=args.batch_size,
        indices=range(args.memory_child),
        workers=0,
    )
    seconds = time.perf_counter() - t0
    _, traced = tracemalloc.get_traced_memory()
    peak = peak_rss()
    out = {"images": args.memory_child, "rows": len(acts.x), "seen": acts.seen, "seconds": seconds}
    out.update(
        peak_rss_mb=peak / 2**20, rss_growth_mb=(peak - base) / 2**20, tracemalloc_peak_mb=traced / 2**20
    )
    print(json.dumps(out))


def reset_peak_rss() -> None:
    """Reset the kernel's peak RSS of this process (VmHWM) to the current RSS (Linux >= 4.0), so
    the peak read after the collection is the collection's, not the model loading's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """Peak RSS in bytes since :func:`reset_peak_rss` (VmHWM; ``ru_maxrss`` without /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def memory(args, folder: Path) -> list[dict]:
    rows = []
    for n in (args.memory_images, 4 * args.memory_images):
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--folder", str(folder)]
        cmd += ["--layers", args.layers, "--device", args.device, "--samples", str(args.memory_samples)]
        cmd += ["--per-image", str(args.per_image), "--batch-size", str(args.batch_size)]
        # the child's own --samples is the reservoir of this part
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [head, "| " + " | ".join("---" for _ in columns) + " |"]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    ap.add_argument("--images", type=int, default=None, help="images of part 1 (default 512; quick 32)")
    ap.add_argument("--layers", default="bn2,blocks.3")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--per-image", type=int, default=16)
    ap.add_argument(
        "--samples", type=int, default=None, help="reservoir of parts 1-2 (default 20000; quick 1000)"
    )
    ap.add_argument("--n", type=int, default=None, help="NMF concepts (default 32; quick 8)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats of part 1 (default 3; quick 1)"
    )
    ap.add_argument("--sae-steps", type=int, default=None, help="SAE steps of both SAEs (default 1000)")
    ap.add_argument("--data", default=str(CIFAR))
    ap.add_argument("--out", default=None, help="default benchmarks/concepts.json (quick: /tmp)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        return memory_child(args)
    q = args.quick
    args.images = args.images or (32 if q else 512)
    args.samples = args.samples or (1000 if q else 20000)
    args.n = args.n or (8 if q else 32)
    args.repeats = args.repeats or (1 if q else 3)
    args.nmf_iter = 50 if q else 400
    args.fit_repeats = 1 if q else 3  # the encoders' timings, best of
    args.sae_atoms, args.sae_k = (32, 4) if q else (128, 8)
    args.sae_steps, args.sae_batch = (100, 256) if q else (args.sae_steps or 1000, 512)
    args.memory_images = 32 if q else 256  # at least one batch: every batch is full at both sizes
    args.memory_samples = 100 if q else 2000  # below N x per_image: the reservoir is full at both sizes
    out = Path(
        args.out
        or (
            Path(tempfile.gettempdir()) / "concepts-quick.json"
            if q
            else Path(__file__).with_name("concepts.json")
        )
    )

    import convscope

    started = time.perf_counter()
    root = Path(tempfile.gettempdir()) / "convscope-bench-concepts"
    folder = make_folder(root / f"photos-{args.images}", args.images, Path(args.data))
    mem_folder = make_folder(
        root / f"photos-{4 * args.memory_images}", 4 * args.memory_images, Path(args.data)
    )
    subject = convscope.load(device=args.device)

    collect_rows = collection(args, subject, folder)
    what = f"{args.images} photos, batch {args.batch_size}, {args.per_image} rows per image, {args.device}"
    print(f"\n### Collection ({subject.name}, {what})\n")
    print(
        table(
            collect_rows,
            [
                ("what", "measurement", ""),
                ("img_s", "images/s", ".1f"),
                ("rows_s", "rows/s", ".0f"),
                ("vs_bare", "ratio to bare forward", ".2f"),
                ("vs_data_path", "ratio to data path + forward", ".2f"),
            ],
        )
    )
    fit_rows = fitting(args, subject, folder, args.layers.split(",")[0])
    print(f"\n### Fitting (activations of {args.layers.split(',')[0]})\n")
    print(
        table(
            fit_rows,
            [
                ("what", "task", ""),
                ("ours_s", "convscope s", ".2f"),
                ("reference", "reference", ""),
                ("reference_s", "reference s", ".2f"),
                ("time_ratio", "time ratio", ".2f"),
                ("ours_error", "convscope rel. error", ".4f"),
                ("reference_error", "reference rel. error", ".4f"),
            ],
        )
    )
    diff = next(r["max_dictionary_difference"] for r in fit_rows if "max_dictionary_difference" in r)
    print(f"\nlargest |dictionary difference|, ours vs scikit-learn's fit: {diff:.1e}")
    mem_rows = memory(args, mem_folder)
    print(f"\n### Memory (max_samples {args.memory_samples}, workers 0, one process per size)\n")
    print(
        table(
            mem_rows,
            [
                ("images", "images", ""),
                ("seen", "rows offered", ""),
                ("rows", "rows kept", ""),
                ("peak_rss_mb", "peak RSS MB", ".0f"),
                ("rss_growth_mb", "RSS growth MB", ".1f"),
                ("tracemalloc_peak_mb", "tracemalloc peak MB", ".2f"),
            ],
        )
    )
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s")
    result = {
        "model": subject.name,
        "device": str(subject.device),
        "torch_threads": torch.get_num_threads(),
        "quick": q,
        "settings": {k: v for k, v in vars(args).items() if k not in ("memory_child", "folder")},
        "collection": collect_rows,
        "fitting": fit_rows,
        "memory": mem_rows,
        "seconds": total,
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
