"""isc-report: the pair tables, the HTML page and its images, the CLI, and the page in a real browser."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli, one_line_error
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from isc.core.tables import read_ground_truth, write_predictions
from isc.evaluate.metrics import evaluate
from isc.evaluate.pairs import label_predictions, missed_pairs, sample_pairs, top_false_matches
from isc.evaluate.report import build_report, write_report, write_summary_png
from isc.evaluate.thumbnails import load_thumbnail

DATA_URI = re.compile(r'src="(data:image/(jpeg|png);base64,([A-Za-z0-9+/=]+))"')


def synthetic_predictions(ground_truth: pd.DataFrame, n_references: int, seed: int = 0) -> pd.DataFrame:
    """A plausible matcher's output: 5 random references per query, the true one (when any) usually scoring higher."""
    rng = np.random.default_rng(seed)
    references = [f"R{i:06d}" for i in range(n_references)]
    rows = []
    for query, truth in zip(ground_truth["query_id"], ground_truth["reference_id"], strict=True):
        candidates = set(rng.choice(references, 5, replace=False)) | ({truth} if truth else set())
        rows += [(query, r, float(rng.normal(0.8 if r == truth else 0.3, 0.2))) for r in sorted(candidates)]
    return pd.DataFrame(rows, columns=["query_id", "reference_id", "score"])


def frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["query_id", "reference_id", "score"])


GT = pd.DataFrame({"query_id": ["Q00000", "Q00001", "Q00002", "Q00003"],
                   "reference_id": ["R000001", "R000002", "", "R000003"]})


def test_label_predictions_flags_true_pairs_and_ranks_within_query():
    predictions = frame([("Q00000", "R000001", 0.5), ("Q00000", "R000009", 0.9), ("Q00000", "R000008", 0.5),
                         ("Q00001", "R000002", 0.7), ("Q00002", "R000002", 0.8)])
    labeled = label_predictions(predictions, GT)
    assert labeled["is_match"].tolist() == [True, False, False, True, False]
    # ties count pessimistically: both 0.5 predictions of Q00000 are at rank 3
    assert labeled["rank"].tolist() == [3, 1, 3, 1, 1]


def test_galleries_tables():
    predictions = frame([("Q00000", "R000001", 0.2), ("Q00000", "R000009", 0.9), ("Q00001", "R000002", 0.95),
                         ("Q00002", "R000005", 0.8), ("Q00001", "R000007", 0.1)])
    labeled = label_predictions(predictions, GT)
    wrong = top_false_matches(labeled, 2, GT)
    assert wrong[["query_id", "reference_id", "true_reference_id"]].values.tolist() == [
        ["Q00000", "R000009", "R000001"], ["Q00002", "R000005", ""]]
    missed = missed_pairs(labeled, GT, threshold=0.5)
    by_query = missed.set_index("query_id")
    assert sorted(by_query.index) == ["Q00000", "Q00003"]
    assert by_query.loc["Q00000", "score"] == 0.2 and by_query.loc["Q00000", "rank"] == 2
    assert np.isnan(by_query.loc["Q00003", "score"]) and np.isnan(by_query.loc["Q00003", "rank"])  # not retrieved
    assert len(missed_pairs(labeled, GT, threshold=None)) == 3  # precision never reached: all missed
    several = pd.concat([GT, pd.DataFrame({"query_id": ["Q00000"], "reference_id": ["R000004"]})])
    assert top_false_matches(labeled, 1, several)["true_reference_id"].tolist() == ["R000001 R000004"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5), st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9])),
                min_size=1, max_size=40, unique_by=lambda t: (t[0], t[1])),
       st.lists(st.integers(-1, 5), min_size=8, max_size=8))
def test_missed_pairs_are_exactly_those_recall_at_p90_does_not_count(rows, truth):
    ground_truth = pd.DataFrame({"query_id": [f"Q{q:05d}" for q in range(8)],
                                 "reference_id": [f"R{r:06d}" if r >= 0 else "" for r in truth]})
    if (ground_truth["reference_id"] == "").all():
        return
    predictions = frame([(f"Q{q:05d}", f"R{r:06d}", s) for q, r, s in rows])
    metrics = evaluate(predictions, ground_truth)
    missed = missed_pairs(label_predictions(predictions, ground_truth), ground_truth, metrics.threshold_at_p90)
    found = round((metrics.recall_at_p90 or 0.0) * metrics.n_positives)
    assert len(missed) == metrics.n_positives - found


def test_sample_pairs_is_bounded_reproducible_and_sorted():
    pairs = pd.DataFrame({"query_id": [f"Q{i:05d}" for i in range(100)], "score": np.linspace(0, 1, 100)})
    first, again = sample_pairs(pairs, 10, seed=3), sample_pairs(pairs, 10, seed=3)
    assert len(first) == 10 and first.equals(again)
    assert first["score"].is_monotonic_decreasing
    assert len(sample_pairs(pairs, 1000)) == 100


def test_load_thumbnail_shrinks_and_returns_none_for_missing_or_corrupt(tmp_path):
    Image.new("RGB", (640, 320), (10, 200, 30)).save(tmp_path / "a.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert load_thumbnail(tmp_path / "a.jpg", 160).size == (160, 80)
    assert load_thumbnail(tmp_path / "bad.jpg") is None
    assert load_thumbnail(tmp_path / "absent.jpg") is None


def embedded_images(page: str) -> list[Image.Image]:
    """Decode every image of the page; it fails if any src is not a data URI or does not decode."""
    sources = re.findall(r'src="([^"]*)"', page)
    matches = DATA_URI.findall(page)
    assert len(matches) == len(sources), "every image must be an embedded data URI"
    images = []
    for _, _, payload in matches:
        with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
            image.load()
            images.append(image.copy())
    return images


@pytest.fixture(scope="module")
def mini_predictions(mini_dataset, tmp_path_factory) -> Path:
    ground_truth = read_ground_truth(mini_dataset / "ground_truth.csv")
    path = tmp_path_factory.mktemp("report") / "predictions.csv"
    n_references = len(list((mini_dataset / "reference_images").glob("*.jpg")))
    write_predictions(path, synthetic_predictions(ground_truth, n_references))
    return path


@pytest.fixture(scope="module")
def mini_report(mini_dataset, mini_predictions, tmp_path_factory) -> tuple[Path, Path, str]:
    """isc-report run as a subprocess on the mini dataset: (html, png, stdout)."""
    out = tmp_path_factory.mktemp("report_out")
    html_path, png_path = out / "report.html", out / "summary.png"
    result = cli("report", mini_predictions, "--gt", mini_dataset / "ground_truth.csv", "--data", mini_dataset,
                 "-o", html_path, "--png", png_path, "--gallery-size", "6", "--quiet")
    assert result.returncode == 0, result.stderr
    return html_path, png_path, result.stdout


def test_cli_writes_a_self_contained_report(mini_report, mini_dataset, mini_predictions):
    html_path, png_path, _ = mini_report
    page = html_path.read_text(encoding="utf-8")
    metrics = evaluate(pd.read_csv(mini_predictions), read_ground_truth(mini_dataset / "ground_truth.csv"))
    assert f"{metrics.muap:.4f}" in page and f"{metrics.threshold_at_p90:.6g}" in page
    assert not re.search(r'(src|href)="(?!data:)', page), "nothing may be fetched from outside the page"
    assert "<script" not in page
    images = embedded_images(page)
    n_pairs = sum(int(n) for n in re.findall(r"\((\d+) shown of", page))
    assert 0 < n_pairs <= 18 and len(images) == 2 + 2 * n_pairs  # PR curve, histograms, then two per pair
    thumbnails = images[2:]
    assert all(max(t.size) <= 160 for t in thumbnails)
    assert all(np.asarray(t).std() > 5 for t in thumbnails), "thumbnails of the synthetic images are not flat"
    summary = Image.open(png_path)
    assert summary.width > 1000 and np.asarray(summary.convert("L")).std() > 10


def test_missing_images_become_placeholder_tiles(mini_dataset, tmp_path):
    ground_truth = read_ground_truth(mini_dataset / "ground_truth.csv")
    query = ground_truth["query_id"].iloc[0]
    # the best-scoring false match points at a reference the dataset does not have
    predictions = pd.concat([synthetic_predictions(ground_truth, 10), frame([(query, "R999999", 9.0)])])
    report = build_report(predictions, ground_truth, mini_dataset, gallery_size=4, quiet=True)
    assert report.missing_images == ["R999999"]
    assert report.galleries[0].pairs["reference_id"].iloc[0] == "R999999"
    tile = np.asarray(report.thumbnails["reference", "R999999"])
    assert tile.shape == (160, 160, 3) and (tile == (200, 200, 200)).all(axis=2).mean() > 0.8
    write_report(report, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "1 image not found" in page and len(embedded_images(page)) == 2 + 2 * 12


def test_large_predictions_file_gives_bounded_galleries(mini_dataset, tmp_path):
    rng = np.random.default_rng(1)
    n_queries, per_query = 50_000, 10
    queries = np.repeat(np.arange(n_queries), per_query)
    references = (np.arange(n_queries * per_query) * 7919) % 1_000_000  # distinct pairs
    # a fifth of the queries have their true reference among their predictions, a tenth one never retrieved
    draw = rng.random(n_queries)
    truth = np.select([draw < 0.2, draw < 0.3], [references[::per_query], 999_999], -1)
    predictions = pd.DataFrame({"query_id": np.char.add("Q", np.char.zfill(queries.astype(str), 5)),
                                "reference_id": np.char.add("R", np.char.zfill(references.astype(str), 6)),
                                "score": rng.random(len(queries)) + 0.7 * (references == truth[queries])})
    ground_truth = pd.DataFrame({"query_id": np.char.add("Q", np.char.zfill(np.arange(n_queries).astype(str), 5)),
                                 "reference_id": [f"R{t:06d}" if t >= 0 else "" for t in truth]})
    report = build_report(predictions, ground_truth, mini_dataset, gallery_size=8, quiet=True)
    assert [len(g.pairs) for g in report.galleries] == [8, 8, 8]
    assert report.galleries[2].total == report.metrics.n_true_positives
    missed = report.galleries[1].total
    assert missed == report.metrics.n_positives - round(report.metrics.recall_at_p90 * report.metrics.n_positives)
    assert missed > (truth == 999_999).sum()  # the never retrieved and the low scored
    write_report(report, tmp_path / "big.html")
    write_summary_png(report, tmp_path / "big.png")
    assert (tmp_path / "big.html").stat().st_size < 2_000_000


def test_bad_input_is_one_line_and_leaves_the_output_alone(mini_dataset, mini_predictions, tmp_path):
    output = tmp_path / "report.html"
    output.write_text("previous report")
    gt = str(mini_dataset / "ground_truth.csv")
    for args, message in [
        ((str(mini_predictions), "--gt", gt, "--data", str(tmp_path / "nowhere")), "does not exist"),
        ((str(tmp_path / "absent.csv"), "--gt", gt, "--data", str(mini_dataset)), "no such file"),
        ((str(mini_predictions), "--gt", str(mini_dataset / "query_metadata.csv"), "--data", str(mini_dataset)),
         "reference_id"),
    ]:
        result = cli("report", *args, "-o", str(output), "-q")
        one_line_error(result, "isc-report", message)
        assert output.read_text() == "previous report"


# ----------------------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# runs before the page's content; on load it writes what the page saw into an attribute of <body>
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || ("cannot load " + e.target.src))), true);
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    errors: window.__errors,
    fetched: performance.getEntriesByType("resource").map(r => r.name)}));
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "HOME": str(profile)})


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it when run as root)")
def test_report_renders_in_headless_chromium(mini_report, tmp_path):
    html_path, _, _ = mini_report
    page = html_path.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    dom = chromium("--dump-dom", probed.as_uri(), profile=tmp_path / "profile1")
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, f"the page did not finish loading: {dom.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["images"] == len(DATA_URI.findall(page)) and probe["images"] > 2
    assert probe["broken"] == [] and probe["errors"] == [] and probe["fetched"] == []
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr

    screenshot = tmp_path / "shot.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,1600", html_path.as_uri(),
                    profile=tmp_path / "profile2")
    assert screenshot.is_file(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 20, "the screenshot is blank"
    # colourful thumbnails rendered below the figures: many strongly saturated pixels in the lower half
    lower = pixels[800:]
    assert ((lower.max(axis=2) - lower.min(axis=2)) > 80).mean() > 0.02
