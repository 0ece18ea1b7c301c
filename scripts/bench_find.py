"""isc-find against another near-duplicate finder on one folder of real photos and edited copies of them.

    python scripts/bench_find.py build PHOTOS OUT      # OUT/references, OUT/queries, OUT/all, OUT/truth.json
    python scripts/bench_find.py score OUT/truth.json GROUPS.json [GROUPS.json ...]
    python scripts/bench_find.py table GROUND_TRUTH.csv PAIRS.csv [PAIRS.csv ...] [--precision P ...]
    python scripts/bench_find.py groups-table GROUND_TRUTH.csv FOUND.json|FOUND.csv [...] [--matched]

``build`` takes 26 photos of PHOTOS (seeded choice): 20 references, and 20 queries made of 14 edited copies
of references (the edits of the experiment in the README: crops, rotations, text, JPEG quality 10, flips,
padding, blur, ...) and 6 unrelated photos; ``all/`` holds the 40 images under one folder. ``score`` reads
groups written as ``{"groups": [[path, ...]]}`` (isc-find) or ``{"near": [[path, ...]], "exact": [...]}``
(Immaculate's --json) and counts, against the 14 true pairs, the groups that are exactly a true pair, the
groups that hold images of two different true groups or an unrelated photo (false), and the true pairs
found inside any group. ``table`` reads isc-find's CSV pairs of a set with ground truth (an ``isc-synth``
set's ``ground_truth.csv``; only its queries that appear in the pairs count) and prints, by threshold, the
pairs kept, the copies among them, precision and recall, and the lowest threshold at each target precision
(0.95 and 0.98, or ``--precision``'s); its pairs are isc-find's with ``--threshold 0.000001`` (every candidate).
``groups-table`` scores what a tool found in a set's queries and references put in one folder (file stems are
the set's ids): groups as ``score`` reads them, every (query, reference) pair within a group counted as found
(``--matched``: isc-find's JSON pairs instead of its groups), or isc-find's CSV pairs of two folders; it prints
the pairs found, the copies among them, precision, and recall of all the ground truth's copies.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from isc.cli.common import one_line_usage_errors
from isc.extract.image_files import list_images


def _text(image: Image.Image) -> Image.Image:
    out = image.copy()
    font = ImageFont.load_default(size=max(12, image.height // 8))
    ImageDraw.Draw(out).text((image.width // 10, image.height // 3), "COPY 2024", fill=(255, 255, 0), font=font)
    return out


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def recompress(image: Image.Image) -> Image.Image:
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return recompress


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "centre crop 60%": lambda im: im.crop((im.width // 5, im.height // 5, im.width * 4 // 5, im.height * 4 // 5)),
    "corner crop 70%": lambda im: im.crop((0, 0, im.width * 7 // 10, im.height * 7 // 10)),
    "rotated 90": lambda im: im.rotate(90, expand=True),
    "rotated 15": lambda im: im.rotate(15, expand=True, fillcolor=(0, 0, 0)),
    "text": _text,
    "jpeg q10": _jpeg(10),
    "mirrored": ImageOps.mirror,
    "upside down": ImageOps.flip,
    "padded": lambda im: ImageOps.expand(im, border=im.width // 5, fill=(255, 255, 255)),
    "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "half size": lambda im: im.resize((im.width // 2, im.height // 2)),
    "grey": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "crop and jpeg q30": lambda im: _jpeg(30)(im.crop((im.width // 8, 0, im.width, im.height * 7 // 8))),
    "darker": lambda im: im.point(lambda v: v * 6 // 10),
}


def build(photos: Path, out: Path, seed: int = 0) -> dict[str, object]:
    chosen = random.Random(seed).sample(sorted(list_images(photos).values()), 20 + 6)
    references, unrelated = chosen[:20], chosen[20:]
    folders = {name: out / name for name in ("references", "queries", "all")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    truth = []
    for number, path in enumerate(references):
        with Image.open(path) as image:
            image = image.convert("RGB")
        reference = f"photo {number:02d}.jpg"
        image.save(folders["references"] / reference, quality=92)
        image.save(folders["all"] / reference, quality=92)
        if number < len(EDITS):
            edit = list(EDITS)[number]
            copy = f"photo {number:02d}, {edit}.jpg"
            edited = EDITS[edit](image)
            edited.save(folders["queries"] / copy, quality=92)
            edited.save(folders["all"] / copy, quality=92)
            truth.append([reference, copy])
    for number, path in enumerate(unrelated):
        with Image.open(path) as image:
            name = f"other {number}.jpg"
            image.convert("RGB").save(folders["queries"] / name, quality=92)
            image.convert("RGB").save(folders["all"] / name, quality=92)
    record = {"photos": [p.name for p in chosen], "pairs": truth}
    (out / "truth.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def score(truth_path: Path, groups_path: Path) -> dict[str, int]:
    pairs = json.loads(truth_path.read_text())["pairs"]
    group_of = {name: i for i, pair in enumerate(pairs) for name in pair}
    result = json.loads(groups_path.read_text())
    groups = result.get("groups", []) + result.get("near", []) + result.get("exact", [])
    named = [{Path(p).name for p in group} for group in groups]
    exact = sum(1 for g in named if any(g == set(pair) for pair in pairs))
    false = sum(1 for g in named if len({group_of.get(n, -1 - i) for i, n in enumerate(sorted(g))}) > 1)
    found = sum(1 for pair in pairs if any(set(pair) <= g for g in named))
    return {"groups": len(named), "exact true groups": exact, "false groups": false, "true pairs found": found,
            "true pairs": len(pairs)}


def found_pairs(found_path: Path, queries: set[str], matched: bool = False) -> set[tuple[str, str]]:
    """The (query, reference) pairs of a tool's output: a CSV's rows, or every pair of a query and a reference
    (an image whose stem is not among ``queries``) within one group of a JSON file; ``matched``: within one of
    isc-find's JSON pairs instead (the matches themselves, not the groups they join)."""
    if found_path.suffix.lower() == ".csv":
        with found_path.open(newline="") as handle:
            return {(row["query_id"], row["reference_id"]) for row in csv.DictReader(handle)}
    result = json.loads(found_path.read_text())
    if matched:
        groups = [[pair["query"], pair["reference"]] for pair in result["pairs"]]
    else:
        groups = result.get("groups", []) + result.get("near", []) + result.get("exact", [])
    pairs = set()
    for group in groups:
        stems = {Path(p).stem for p in group}
        pairs |= {(q, r) for q in stems & queries for r in stems - queries}
    return pairs


def groups_table(truth_path: Path, found_path: Path, matched: bool = False) -> dict[str, object]:
    """Pairs found, the copies among them, precision, and recall of the ground truth's every copy."""
    from isc.core.tables import read_ground_truth

    truth = read_ground_truth(truth_path)
    copies = {(q, r) for q, r in zip(truth["query_id"], truth["reference_id"], strict=True) if r}
    found = found_pairs(found_path, set(truth["query_id"]), matched)
    hits = len(found & copies)
    return {"pairs found": len(found), "copies found": hits,
            "precision": round(hits / len(found), 3) if found else None,
            "recall": round(hits / len(copies), 3), "copies": len(copies)}


THRESHOLDS = [round(0.3 + 0.05 * i, 2) for i in range(11)]
TARGETS = (0.95, 0.98)


def table(truth_path: Path, pairs_path: Path, targets: tuple[float, ...] = TARGETS) -> dict[str, object]:
    import pandas as pd

    from isc.core.tables import read_ground_truth

    pairs = pd.read_csv(pairs_path, dtype={"query_id": str, "reference_id": str})
    truth = read_ground_truth(truth_path)
    truth = truth[truth["query_id"].isin(set(pairs["query_id"])) & (truth["reference_id"] != "")]
    copies = set(zip(truth["query_id"], truth["reference_id"], strict=True))
    # one score per true pair: the kept pairs' order by decreasing score, ties by ids
    ordered = pairs.sort_values(["score", "query_id", "reference_id"], ascending=[False, True, True])
    correct = [pair in copies for pair in zip(ordered["query_id"], ordered["reference_id"], strict=True)]
    rows = []
    for threshold in THRESHOLDS:
        kept = ordered["score"].to_numpy() >= threshold
        hits = sum(c for c, k in zip(correct, kept, strict=True) if k)
        rows.append({"threshold": threshold, "kept": int(kept.sum()), "copies": hits,
                     "precision": round(hits / kept.sum(), 3) if kept.sum() else None,
                     "recall": round(hits / len(copies), 3)})
    lowest = {}
    for target in targets:  # the lowest score whose pairs at or above it reach this precision
        hits, best = 0, None
        for number, (is_copy, score) in enumerate(zip(correct, ordered["score"], strict=True), start=1):
            hits += is_copy
            if hits / number >= target:
                best = (round(float(score), 4), round(hits / len(copies), 3))
        lowest[f"precision >= {target}"] = best
    return {"true pairs": len(copies), "rows": rows, "lowest threshold, recall": lowest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build")
    make.add_argument("photos", type=Path)
    make.add_argument("out", type=Path)
    make.add_argument("--seed", type=int, default=0)
    judge = commands.add_parser("score")
    judge.add_argument("truth", type=Path)
    judge.add_argument("groups", type=Path, nargs="+")
    tabulate = commands.add_parser("table")
    tabulate.add_argument("truth", type=Path)
    tabulate.add_argument("pairs", type=Path, nargs="+")
    tabulate.add_argument("--precision", type=float, nargs="+", default=TARGETS,
                          help="the target precisions whose lowest threshold is printed")
    by_groups = commands.add_parser("groups-table")
    by_groups.add_argument("truth", type=Path)
    by_groups.add_argument("found", type=Path, nargs="+")
    by_groups.add_argument("--matched", action="store_true", help="isc-find's JSON pairs, not its groups")
    one_line_usage_errors(parser)
    args = parser.parse_args()
    if args.command == "groups-table":
        for path in args.found:
            try:
                print(path, json.dumps(groups_table(args.truth, path, args.matched)))
            except (OSError, ValueError, KeyError, TypeError) as e:  # InputError is a ValueError
                parser.error(f"scoring {path}: {type(e).__name__}: {e}")
        return
    if args.command == "table":
        for path in args.pairs:
            print(path, json.dumps(table(args.truth, path, tuple(args.precision)), indent=1))
        return
    if args.command == "build":
        record = build(args.photos, args.out, args.seed)
        print(f"{len(record['pairs'])} copies of 20 references and 6 unrelated photos in {args.out}")
        return
    for path in args.groups:
        print(path, json.dumps(score(args.truth, path)))


if __name__ == "__main__":
    main()
