"""isc-find's page: the copies found in a user's folders (no ground truth), as groups and galleries of pairs."""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from isc.core.files import atomic_path
from isc.evaluate.html_pages import EMPTY, page_html
from isc.evaluate.pairs import GALLERY_SIZE, Gallery
from isc.evaluate.thumbnails import THUMBNAIL_SIZE, ImageLocator, jpeg_data_uri, load_thumbnails


def write_matches_page(
    path: str | Path, matches: pd.DataFrame, below: pd.DataFrame, locate: ImageLocator, summary: str,
    gallery_size: int = 200, thumbnail_size: int = THUMBNAIL_SIZE, quiet: bool = False,
    groups: list[list[tuple[str, str]]] | None = None,
) -> None:
    """An HTML page of found copies (no ground truth): the ``groups`` (lists of (side, id)) when given, the best
    ``gallery_size`` matches, then the best pairs scoring just below the threshold, each image read from
    ``locate(side, id)`` and labelled by its path, a link to the file (and by its side without ``groups``: two
    folders)."""
    galleries = [
        Gallery("Matches", "Pairs at or above the threshold, best first.", matches.head(gallery_size), len(matches)),
        Gallery("Closest below the threshold", "The best pairs that were not kept: copies missed, if any.",
                below.head(min(gallery_size, GALLERY_SIZE)), len(below)),
    ]
    shown_groups = (groups or [])[:gallery_size]
    thumbnails, _ = load_thumbnails(galleries, locate, thumbnail_size, quiet,
                                    more=[node for group in shown_groups for node in group])
    folder = Path(path).resolve().parent

    def label(side: str, image_id: str) -> str:
        image = Path(locate(side, image_id))
        link = quote(Path(os.path.relpath(image.resolve(), folder)).as_posix())
        side_label = "" if groups is not None else f"{side}: "  # one folder: both sides are its images
        return f'{side_label}<a href="{html.escape(link)}">{html.escape(str(image))}</a>'

    header = f"<p>{html.escape(summary)}</p>"
    if groups is not None:
        cards = "".join(
            '<div class="pair"><div class="images">' + "".join(
                f'<figure><img src="{jpeg_data_uri(thumbnails[node])}" alt="{html.escape(node[1])}">'
                f"<figcaption>{label(*node)}</figcaption></figure>" for node in group) + "</div></div>"
            for group in shown_groups)
        header += (f"<section><h2>Groups <small>({len(shown_groups):,} shown of {len(groups):,})</small></h2>"
                   "<p>Images that are copies of one another (connected by the matches), largest group first."
                   f'</p><div class="gallery">{cards or EMPTY}</div></section>')
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page_html("Copies found", header, galleries, thumbnails, thumbnail_size, label=label),
                             encoding="utf-8")
