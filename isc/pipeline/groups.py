"""What isc-find's matches become: groups of copies (the connected components of the matched pairs), each
pair marked when it is an exact copy (the same bytes, or the same pixels), written as CSV or JSON
(:func:`write_matches`) or as text (:func:`groups_text`)."""

from __future__ import annotations

import filecmp
from collections.abc import Mapping
from pathlib import Path

from isc.core.files import write_json
from isc.core.pairs import Pairs
from isc.core.tables import write_rows


def groups_of(matches: Pairs, same_images: bool = False) -> list[list[tuple[str, str]]]:
    """The connected components of the matched pairs: each a list of (side, id), sorted, largest group first;
    ``same_images``: both sides are one folder, an id is one image (side ``query``)."""
    reference_side = "query" if same_images else "reference"
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for query, reference in zip(matches["query_id"], matches["reference_id"], strict=True):
        parent[root(("query", query))] = root((reference_side, reference))
    members: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in list(parent):
        members.setdefault(root(node), []).append(node)
    return sorted((sorted(group) for group in members.values()), key=lambda g: (-len(g), g))


def exact_copy(first: Path, second: Path) -> str:
    """``"bytes"`` when two image files are the same bytes, ``"pixels"`` when they decode to the same pixels
    (another format or metadata), else ``""`` (an edited copy, or unreadable)."""
    from PIL import Image  # here: only matched pairs are compared

    try:
        if filecmp.cmp(first, second, shallow=False):
            return "bytes"
        with Image.open(first) as a, Image.open(second) as b:
            if a.size != b.size:  # from the headers: most pairs end here, undecoded
                return ""
            return "pixels" if a.convert("RGBA").tobytes() == b.convert("RGBA").tobytes() else ""
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""


def unreadable_path(output: str | Path) -> Path:
    """Where a CSV output's unreadable images are listed: ``OUT.unreadable.csv`` beside ``OUT.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.unreadable.csv")


def write_matches(
    path: str | Path, matches: Pairs, paths: Mapping[str, Mapping[str, Path]], record: Mapping[str, object],
    same_images: bool = False,
) -> None:
    """Write the matches (with their ``exact`` column, :func:`exact_copy`): a ``.json`` file holds ``record`` (its
    ``unreadable`` images included), the groups (lists of image paths) and the pairs; any other suffix a CSV
    ``query_id,reference_id,score,query_path,reference_path,exact`` (quoted as needed), with the unreadable
    images ``path,reason`` in :func:`unreadable_path` when there are any (an older run's list removed when there
    are none)."""
    query_paths = [str(paths["query"][i]) for i in matches.query_id]
    reference_paths = [str(paths["reference"][i]) for i in matches.reference_id]
    if Path(path).suffix.lower() != ".json":
        unreadable = dict(record.get("unreadable") or {})
        if unreadable:
            write_rows(unreadable_path(path), ("path", "reason"), unreadable.items())
        else:
            unreadable_path(path).unlink(missing_ok=True)
        write_rows(path, ("query_id", "reference_id", "score", "query_path", "reference_path", "exact"),
                   zip(matches.query_id, matches.reference_id, (f"{s:.6g}" for s in matches.score), query_paths,
                       reference_paths, matches.exact, strict=True))
        return
    groups = [[str(paths[side][i]) for side, i in group] for group in groups_of(matches, same_images)]
    pairs = [{"query": q, "reference": r, "score": round(float(s), 6), "exact": e or None}
             for q, r, s, e in zip(query_paths, reference_paths, matches.score, matches.exact, strict=True)]
    write_json(path, {**record, "groups": groups, "pairs": pairs})


def groups_text(matches: Pairs, paths: Mapping[str, Mapping[str, Path]], same_images: bool = False) -> str:
    """The groups as text: a block of lines per group (largest first), one path a line, blocks apart by an empty
    line; an image that is an exact copy of one listed before it says so after a tab (``same bytes as PATH``,
    ``same pixels as PATH``)."""
    reference_side = "query" if same_images else "reference"
    exact = {}  # node: (node it copies exactly, how)
    for query, reference, how in zip(matches["query_id"], matches["reference_id"], matches["exact"], strict=True):
        if how:
            first, second = sorted([("query", query), (reference_side, reference)])
            exact.setdefault(second, (first, how))
    blocks = []
    for group in groups_of(matches, same_images):
        lines = []
        for side, image_id in group:
            line = str(paths[side][image_id])
            if (side, image_id) in exact:
                (other_side, other), how = exact[side, image_id]
                line += f"\tsame {how} as {paths[other_side][other]}"
            lines.append(line)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
