"""Submissions: every rule of both tracks, the files written and read back, manifests, phase-2 reuse, the CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import isc
from isc.core.competition import MATCHING_TRACK_MAX_ROWS
from isc.core.descriptors import read_descriptor_track, write_descriptors
from isc.core.files import InputError
from isc.core.tables import read_ground_truth, read_predictions, write_predictions
from isc.evaluate.metrics import evaluate, score_descriptor_track
from isc.search.capped_search import capped_l2_search, descriptor_track_predictions
from isc.submit.descriptors import submit_descriptors
from isc.submit.manifest import default_submission_path, read_manifest
from isc.submit.matching import check_matching_csv, submit_matching
from isc.submit.violations import SubmissionError, Violation, format_violations

HEADER = "query_id,reference_id,score\n"
GOOD_ROWS = "Q00001,R000010,0.9\nQ00002,R000020,0.5\n"
ATTRS = {"model": "resnet50", "image_size": 224, "whitening": "pca-0123abcd"}


def md5_of(path: Path) -> str:
    """The competition's checksum, computed here independently of the toolkit's io.file_digest."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_text(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ----------------------------------------------------------------------------------- matching track

# (name, file content, phase, rule, line of the first violation of that rule or None for file-level)
INVALID_MATCHING = [
    ("header-order", "reference_id,query_id,score\nR000010,Q00001,0.9\n", 1, "header", 1),
    ("header-missing-column", "query_id,reference_id\nQ00001,R000010\n", 1, "header", 1),
    ("header-extra-column", "query_id,reference_id,score,rank\nQ00001,R000010,0.9,1\n", 1, "header", 1),
    ("header-spaces", "query_id, reference_id, score\nQ00001,R000010,0.9\n", 1, "header", 1),
    ("empty-file", "", 1, "empty file", None),
    ("header-only", HEADER, 1, "no predictions", None),
    ("too-few-fields", HEADER + GOOD_ROWS + "Q00003,R000030\n", 1, "wrong number of fields", 4),
    ("too-many-fields", HEADER + "Q00003,R000030,0.1,7\n" + GOOD_ROWS, 1, "wrong number of fields", 2),
    ("malformed-query", HEADER + GOOD_ROWS + "Q0003,R000030,0.1\n", 1, "malformed query_id", 4),
    ("lowercase-query", HEADER + "q00003,R000030,0.1\n", 1, "malformed query_id", 2),
    ("reference-as-query", HEADER + "R000003,R000030,0.1\n", 1, "malformed query_id", 2),
    ("malformed-reference", HEADER + GOOD_ROWS + "Q00003,R00030,0.1\n", 1, "malformed reference_id", 4),
    ("training-as-reference", HEADER + "Q00003,T000030,0.1\n", 1, "malformed reference_id", 2),
    ("phase2-query-in-phase1", HEADER + GOOD_ROWS + "Q50000,R000030,0.1\n", 1, "query outside the phase", 4),
    (
        "phase1-query-in-phase2",
        HEADER + "Q50001,R000010,0.9\nQ49999,R000030,0.1\n",
        2,
        "query outside the phase",
        3,
    ),
    ("nan-score", HEADER + "Q00003,R000030,nan\n", 1, "score not a finite number", 2),
    ("inf-score", HEADER + GOOD_ROWS + "Q00003,R000030,-inf\n", 1, "score not a finite number", 4),
    ("overflowing-score", HEADER + "Q00003,R000030,1e999\n", 1, "score not a finite number", 2),
    ("empty-score", HEADER + "Q00003,R000030,\n", 1, "score not a finite number", 2),
    ("text-score", HEADER + "Q00003,R000030,high\n", 1, "score not a finite number", 2),
    ("duplicated-pair", HEADER + GOOD_ROWS + "Q00001,R000010,0.2\n", 1, "duplicated pair", 4),
    ("unterminated-quote", HEADER + GOOD_ROWS + 'Q00003,"R000030,0.1\n', 1, "unreadable CSV", 4),
    ("not-utf8", HEADER.encode() + b"Q00003,R000030,0.1\xff\n", 1, "not UTF-8", 2),
]


@pytest.mark.parametrize(
    "name, content, phase, rule, line", INVALID_MATCHING, ids=[c[0] for c in INVALID_MATCHING]
)
def test_each_matching_rule_rejects_its_example(tmp_path, name, content, phase, rule, line):
    predictions = write_text(tmp_path / f"{name}.csv", content)
    out = tmp_path / "submissions" / "out.csv"
    with pytest.raises(SubmissionError) as error:
        submit_matching(predictions, phase, out)
    found = [v for v in error.value.violations if v.rule == rule]
    assert found, f"no {rule!r} violation in {error.value.violations}"
    assert found[0].line == line
    assert "nothing written" in str(error.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # neither file nor manifest nor temp


def test_too_many_rows(tmp_path):
    rows = [f"Q{i % 50_000:05d},R{i // 50_000:06d},{i}" for i in range(MATCHING_TRACK_MAX_ROWS + 1)]
    write_text(tmp_path / "limit.csv", HEADER + "\n".join(rows[:-1]) + "\n")
    assert check_matching_csv(tmp_path / "limit.csv", 1)[1] == []
    write_text(tmp_path / "big.csv", HEADER + "\n".join(rows) + "\n")
    _, violations = check_matching_csv(tmp_path / "big.csv", 1)
    assert [v.rule for v in violations] == ["too many rows"]
    assert "500,001 predictions" in violations[0].message


def test_expected_ids_of_a_smaller_dataset(tmp_path):
    write_text(tmp_path / "queries.txt", "Q00001\nQ00002\nQ50000\n")
    pd.DataFrame(
        {
            "image_id": ["R000010", "R000020"],
            "s3_uri": ["s3://b/all/reference_images/x.jpg"] * 2,
            "md5_checksum": ["0" * 32] * 2,
        }
    ).to_csv(tmp_path / "reference_metadata.csv", index=False)
    predictions = write_text(tmp_path / "p.csv", HEADER + GOOD_ROWS + "Q00003,R000030,0.1\n")
    with pytest.raises(SubmissionError) as error:
        submit_matching(
            predictions,
            1,
            tmp_path / "out.csv",
            tmp_path / "queries.txt",
            tmp_path / "reference_metadata.csv",
        )
    assert [(v.rule, v.line) for v in error.value.violations] == [
        ("unknown query_id", 4),
        ("unknown reference_id", 4),
    ]
    assert "reference_metadata.csv" in str(error.value)
    write_text(predictions, HEADER + GOOD_ROWS)
    submit_matching(
        predictions, 1, tmp_path / "out.csv", tmp_path / "queries.txt", tmp_path / "reference_metadata.csv"
    )
    with pytest.raises(InputError, match="id #1 is 'Q1'"):  # a bad list of ids is an input error of its own
        submit_matching(
            predictions, 1, tmp_path / "out2.csv", write_text(tmp_path / "bad.txt", "Q00001\nQ1\n")
        )


def test_all_violations_found_in_one_pass_and_listing_capped(tmp_path):
    lines = [HEADER.strip()] + [f"Q{i:05d},R{i:06d},{1 - i / 100}" for i in range(30)]
    lines[3] = "Q00002,R000002,nan"
    lines[5] = "Q60000,R000004,0.5"
    lines += [
        "Q00007,R000007,0.1",
        "Q0001,R1,x",
        "Q00040,R000040",
    ]  # duplicate, two malformed ids + score, short
    predictions = write_text(tmp_path / "p.csv", "\n".join(lines) + "\n")
    _, violations = check_matching_csv(predictions, 1)
    assert [(v.line, v.rule) for v in violations] == [
        (4, "score not a finite number"),
        (6, "query outside the phase"),
        (32, "duplicated pair"),
        (33, "malformed query_id"),
        (33, "malformed reference_id"),
        (33, "score not a finite number"),
        (34, "wrong number of fields"),
    ]
    assert "already at line 9" in str(violations[2])
    capped = format_violations("p.csv", violations, max_listed=3)
    listed = capped.splitlines()[1:-1]
    # the first violation of each of the 6 rules is listed, the rest counted
    assert len(listed) == 6 and "... and 1 more (score not a finite number: 1)" in capped
    assert len(format_violations("p.csv", violations, max_listed=0).splitlines()) == 1 + len(violations)
    many = [Violation("r", f"m{i}", line=i) for i in range(1000)]
    assert format_violations("x", many).splitlines()[-1] == "  ... and 980 more (r: 980)"


@pytest.mark.parametrize("phase", [1, 2])
def test_matching_round_trip_and_manifest(tmp_path, phase):
    offset = 0 if phase == 1 else 50_000
    rng = np.random.default_rng(phase)
    predictions = pd.DataFrame(
        {
            "query_id": [f"Q{offset + i // 3:05d}" for i in range(60)],
            "reference_id": [f"R{rng.integers(1_000_000):06d}" for _ in range(60)],
            "score": rng.standard_normal(60),
        }
    ).drop_duplicates(["query_id", "reference_id"])
    source = tmp_path / "predictions.csv"
    write_predictions(source, predictions)
    write_text(Path(str(source) + ".provenance.json"), json.dumps({"model": "resnet50", "k": 10}))
    out = default_submission_path(tmp_path / "submissions", "matching", phase)
    assert out.name == f"phase{phase}_matching.csv"
    assert submit_matching(source, phase, out) == out
    assert out.read_bytes() == source.read_bytes()  # copied byte for byte
    # the submission holds the predictions written, not merely a copy of whatever the source held
    back = read_predictions(out).sort_values(["query_id", "reference_id"]).reset_index(drop=True)
    expected = predictions.sort_values(["query_id", "reference_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back[["query_id", "reference_id"]], expected[["query_id", "reference_id"]])
    np.testing.assert_allclose(back["score"], expected["score"], rtol=1e-6)  # written with 7 significant digits
    manifest = read_manifest(out)
    assert manifest["md5"] == md5_of(out) and manifest["bytes"] == out.stat().st_size
    assert (manifest["track"], manifest["phase"], manifest["file"]) == ("matching", phase, out.name)
    assert manifest["counts"] == {
        "predictions": len(predictions),
        "queries": predictions["query_id"].nunique(),
        "references": predictions["reference_id"].nunique(),
    }
    assert manifest["provenance"] == {str(source) + ".provenance.json": {"model": "resnet50", "k": 10}}
    assert (
        manifest["isc_version"] == isc.__version__
        and manifest["command"]
        and manifest["created_utc"].endswith("+00:00")
    )
    other = 2 if phase == 1 else 1
    with pytest.raises(SubmissionError, match="query outside the phase|is not a phase"):
        submit_matching(source, other, tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()


# --------------------------------------------------------------------------------- descriptor track


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(rng, query_ids, n_references=200, dim=32, noise=0.05):
    """Random unit references; the first half of the queries are noisy copies of references 0, 1, ..."""
    reference_ids = [f"R{i:06d}" for i in range(n_references)]
    reference = unit(rng.standard_normal((n_references, dim)))
    query = unit(rng.standard_normal((len(query_ids), dim)))
    n_matched = len(query_ids) // 2
    query[:n_matched] = unit(reference[:n_matched] + noise * rng.standard_normal((n_matched, dim)))
    ground_truth = pd.DataFrame(
        {
            "query_id": query_ids,
            "reference_id": reference_ids[:n_matched] + [""] * (len(query_ids) - n_matched),
        }
    )
    return reference_ids, reference, query, ground_truth


@pytest.fixture
def synthetic(tmp_path):
    """Phase-1 and phase-2 query files, one reference file, id lists and ground truths (40 queries a phase)."""
    rng = np.random.default_rng(0)
    phase1_ids = [f"Q{i:05d}" for i in range(40)]
    phase2_ids = [f"Q{50_000 + i:05d}" for i in range(40)]
    reference_ids, reference, query1, gt1 = planted(rng, phase1_ids)
    query2 = unit(rng.standard_normal((40, reference.shape[1])))
    query2[:20] = unit(reference[100:120] + 0.05 * rng.standard_normal((20, reference.shape[1])))
    gt2 = pd.DataFrame({"query_id": phase2_ids, "reference_id": reference_ids[100:120] + [""] * 20})
    files = {
        "reference": tmp_path / "reference.h5",
        "query1": tmp_path / "query1.h5",
        "query2": tmp_path / "query2.h5",
    }
    # stored shuffled: the submission must sort ids
    order = rng.permutation(len(reference_ids))
    write_descriptors(
        files["reference"],
        [reference_ids[i] for i in order],
        reference[order],
        {**ATTRS, "split": "reference"},
    )
    write_descriptors(files["query1"], phase1_ids[::-1], query1[::-1], {**ATTRS, "split": "query"})
    write_descriptors(files["query2"], phase2_ids, query2, {**ATTRS, "split": "query"})
    write_text(tmp_path / "queries.txt", "\n".join(phase1_ids + phase2_ids) + "\n")
    write_text(tmp_path / "references.txt", "\n".join(reference_ids) + "\n")
    gt1.to_csv(tmp_path / "gt1.csv", index=False)
    gt2.to_csv(tmp_path / "gt2.csv", index=False)
    return {
        **files,
        "ids": tmp_path / "queries.txt",
        "refs": tmp_path / "references.txt",
        "reference_array": reference,
        "gt1": tmp_path / "gt1.csv",
        "gt2": tmp_path / "gt2.csv",
        "dir": tmp_path,
    }


def test_descriptor_round_trip_both_phases_with_reuse(synthetic):
    s = synthetic
    out1 = default_submission_path(s["dir"] / "submissions", "descriptors", 1)
    submit_descriptors(s["query1"], s["reference"], 1, out1, s["ids"], s["refs"])
    query_ids, query, reference_ids, reference = read_descriptor_track(out1)
    assert query_ids == sorted(query_ids) and len(query_ids) == 40 and query_ids[0] == "Q00000"
    assert reference_ids == [f"R{i:06d}" for i in range(200)]
    np.testing.assert_array_equal(reference, s["reference_array"])
    assert query.dtype == np.float32 and query.shape == (40, 32)
    manifest = read_manifest(out1)
    assert manifest["counts"] == {"queries": 40, "references": 200, "dimension": 32}
    assert (
        manifest["query_attributes"]["model"] == "resnet50"
        and manifest["reference_attributes"]["split"] == "reference"
    )
    assert (
        manifest["md5"] == md5_of(out1)
        and manifest["track"] == "descriptors"
        and manifest["phase1_reference"] is None
    )

    # phase 2: same reference file, new queries; checked against both the phase-1 file and the phase-1 submission
    out2 = s["dir"] / "submissions" / "phase2_descriptors.h5"
    for phase1 in (s["reference"], out1):
        submit_descriptors(s["query2"], s["reference"], 2, out2, s["ids"], s["refs"], phase1_reference=phase1)
        assert read_manifest(out2)["phase1_reference"]["md5"] == md5_of(phase1)
    query_ids2, _, reference_ids2, reference2 = read_descriptor_track(out2)
    assert query_ids2[0] == "Q50000" and reference_ids2 == reference_ids
    np.testing.assert_array_equal(reference2, reference)

    for out, gt in ((out1, s["gt1"]), (out2, s["gt2"])):
        metrics, predictions = score_descriptor_track(out, read_ground_truth(gt), backend="faiss-cpu")
        assert len(predictions) == 400 and metrics.muap == pytest.approx(1.0)  # planted matches come first


def test_phase2_reuse_violations(synthetic):
    s = synthetic
    ids, reference = [f"R{i:06d}" for i in range(200)], s["reference_array"]
    changed = reference.copy()
    changed[7] = unit(changed[7:8] + 0.01)[0]
    cases = {
        "changed-values": (changed, ids, ATTRS, "1 reference descriptors differ from phase 1"),
        "other-ids": (reference, ids[:-1] + ["R000999"], ATTRS, "reference ids absent from the phase-1"),
        "other-whitening": (
            reference,
            ids,
            {**ATTRS, "whitening": "pca-ffff"},
            "whitening: 'pca-0123abcd' != 'pca-ffff'",
        ),
    }
    out = s["dir"] / "phase2.h5"
    for name, (values, reference_ids, attrs, message) in cases.items():
        path = s["dir"] / f"{name}.h5"
        write_descriptors(path, reference_ids, values, {**attrs, "split": "reference"})
        with pytest.raises(SubmissionError, match=message):
            submit_descriptors(
                s["query2"], path, 2, out, s["ids"], s["refs"], phase1_reference=s["reference"]
            )
        assert not out.exists()
    # queries from another model than the phase-1 references'
    write_descriptors(
        s["dir"] / "q2-other.h5",
        [f"Q{50_000 + i:05d}" for i in range(40)],
        unit(np.ones((40, 32))),
        {**ATTRS, "model": "resnet18", "split": "query"},
    )
    with pytest.raises(SubmissionError) as error:
        submit_descriptors(
            s["dir"] / "q2-other.h5",
            s["reference"],
            2,
            out,
            s["ids"],
            s["refs"],
            phase1_reference=s["reference"],
        )
    rules = [v.rule for v in error.value.violations]
    assert rules == ["different models", "model not that of phase 1"]
    assert "model: 'resnet50' != 'resnet18'" in str(error.value) and not out.exists()


def test_descriptor_coverage_and_dimension_violations(synthetic):
    s = synthetic
    out = s["dir"] / "out.h5"
    rng = np.random.default_rng(1)
    # default expectations are the competition's full lists
    with pytest.raises(SubmissionError) as error:
        submit_descriptors(s["query1"], s["reference"], 1, out)
    assert "49,960 of the 50,000 phase-1 queries of the competition are missing: Q00040" in str(error.value)
    assert "999,800 of the 1,000,000 references of the competition are missing: R000200" in str(error.value)
    # a missing query, a query of the other phase, an unknown reference, too many dimensions, different models
    query_ids = [f"Q{i:05d}" for i in range(1, 40)] + ["Q50003"]
    write_descriptors(
        s["dir"] / "q.h5", query_ids, unit(rng.standard_normal((40, 300))), {**ATTRS, "image_size": 288}
    )
    reference_ids = [f"R{i:06d}" for i in range(200)] + ["R123456"]
    write_descriptors(s["dir"] / "r.h5", reference_ids, unit(rng.standard_normal((201, 300))), ATTRS)
    with pytest.raises(SubmissionError) as error:
        submit_descriptors(s["dir"] / "q.h5", s["dir"] / "r.h5", 1, out, s["ids"], s["refs"], max_listed=0)
    messages = [str(v) for v in error.value.violations]
    assert [v.rule for v in error.value.violations] == [
        "dimension",
        "dimension",
        "query outside the phase",
        "missing query ids",
        "unknown reference ids",
        "different models",
    ]
    assert "1 query ids are not phase-1 queries (Q00000–Q49999): Q50003" in messages[2]
    assert "1 of the 40 phase-1 queries of " in messages[3] and messages[3].endswith("Q00000")
    assert "R123456" in messages[4] and "image_size: 288 != 224" in messages[5]
    assert not out.exists()
    # a dimension mismatch between the two files
    write_descriptors(
        s["dir"] / "q16.h5", [f"Q{i:05d}" for i in range(40)], unit(rng.standard_normal((40, 16))), ATTRS
    )
    with pytest.raises(
        SubmissionError, match="query descriptors have 16 dimensions, reference descriptors 32"
    ):
        submit_descriptors(s["dir"] / "q16.h5", s["reference"], 1, out, s["ids"], s["refs"])
    assert not out.exists()


def brute_force_cut(query: np.ndarray, reference: np.ndarray, max_results: int) -> set[tuple[int, int]]:
    distances = ((query[:, None, :].astype(np.float64) - reference[None].astype(np.float64)) ** 2).sum(-1)
    best = np.argsort(distances.ravel(), kind="stable")[:max_results]
    return set(zip(*np.unravel_index(best, distances.shape), strict=True))


def test_capped_search_is_exact_even_with_hub_queries():
    rng = np.random.default_rng(3)
    reference = unit(rng.standard_normal((500, 16)))
    query = unit(rng.standard_normal((30, 16)))
    # a tight cluster of 150 references around query 0: it alone owns most of the 300 closest pairs, so
    # the first k (40) must be doubled twice before the cut is exact
    reference[:150] = unit(query[0] + 0.02 * rng.standard_normal((150, 16)))
    rows, cols, distances = capped_l2_search(query, reference, 300, backend="faiss-cpu")
    assert (rows == 0).sum() >= 150 and np.all(np.diff(distances) >= 0)
    assert set(zip(rows, cols, strict=True)) == brute_force_cut(query, reference, 300)
    exact = ((query[rows] - reference[cols]) ** 2).sum(1)
    np.testing.assert_allclose(distances, exact, rtol=1e-4, atol=1e-5)
    # fewer pairs than asked: everything is kept
    rows, cols, _ = capped_l2_search(query[:2], reference[:5], 100, backend="faiss-cpu")
    assert len(rows) == 10
    predictions = descriptor_track_predictions(
        [f"Q{i:05d}" for i in range(30)],
        query,
        [f"R{i:06d}" for i in range(500)],
        reference,
        backend="faiss-cpu",
    )
    assert len(predictions) == 300 and predictions["score"].is_monotonic_decreasing
    assert (predictions["score"] <= 0).all()


# ---------------------------------------------------------------------------------------- mini dataset


def test_mini_dataset_round_trip_both_phases(mini_dataset, tmp_path):
    """Descriptors planted from the mini dataset's ground truths, checked against its metadata lists."""
    rng = np.random.default_rng(5)
    reference_ids = pd.read_csv(mini_dataset / "reference_metadata.csv")["image_id"].tolist()
    reference = unit(rng.standard_normal((len(reference_ids), 24)))
    write_descriptors(tmp_path / "reference.h5", reference_ids, reference, ATTRS)
    position = {r: i for i, r in enumerate(reference_ids)}
    outs = {}
    for phase, gt_name in ((1, "ground_truth.csv"), (2, "ground_truth_phase2.csv")):
        gt = read_ground_truth(mini_dataset / gt_name)
        query = unit(rng.standard_normal((len(gt), 24)))
        matched = (gt["reference_id"] != "").to_numpy()
        rows = [position[r] for r in gt["reference_id"][matched]]
        query[matched] = unit(reference[rows] + 0.05 * rng.standard_normal((len(rows), 24)))
        write_descriptors(tmp_path / f"query{phase}.h5", gt["query_id"].tolist(), query, ATTRS)
        outs[phase] = submit_descriptors(
            tmp_path / f"query{phase}.h5",
            tmp_path / "reference.h5",
            phase,
            tmp_path / f"phase{phase}.h5",
            mini_dataset / "query_metadata.csv",
            mini_dataset / "reference_metadata.csv",
            phase1_reference=tmp_path / "reference.h5" if phase == 2 else None,
        )
        metrics, predictions = score_descriptor_track(outs[phase], gt, backend="faiss-cpu")
        assert len(predictions) == 10 * len(gt) and metrics.muap == pytest.approx(1.0)
    # each phase's file holds only its own queries
    assert read_descriptor_track(outs[1])[0][-1] < "Q50000" <= read_descriptor_track(outs[2])[0][0]


# ------------------------------------------------------------------------------------------------- CLI


def isc_submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "isc.cli.submit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_cli_matching(tmp_path):
    good = write_text(tmp_path / "good.csv", HEADER + GOOD_ROWS)
    result = isc_submit("matching", good, "--phase", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(Path("submissions") / "phase1_matching.csv")
    assert (tmp_path / "submissions" / "phase1_matching.csv").read_bytes() == good.read_bytes()
    manifest = json.loads((tmp_path / "submissions" / "phase1_matching.csv.manifest.json").read_text())
    assert manifest["command"].endswith(f"matching {good} --phase 1")

    bad = write_text(tmp_path / "bad.csv", HEADER + "Q00001,R000010,0.9\nQ60000,R1,inf\nQ00001,R000010,0.3\n")
    result = isc_submit("matching", bad, "--phase", "1", "-o", tmp_path / "out" / "p.csv", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "4 violations, nothing written" in result.stderr
    for text in (
        "line 3: query_id Q60000 is not a phase-1 query",
        "line 3: reference_id 'R1'",
        "line 3: score 'inf'",
        "line 4: pair (Q00001, R000010) already at line 2",
    ):
        assert text in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_descriptors_and_score(synthetic):
    s = synthetic
    out = s["dir"] / "sub" / "phase1.h5"
    result = isc_submit(
        "descriptors",
        "--query",
        s["query1"],
        "--reference",
        s["reference"],
        "--phase",
        "1",
        "-o",
        out,
        "--expected-queries",
        s["ids"],
        "--expected-references",
        s["refs"],
        "--gt",
        s["gt1"],
        "--backend",
        "faiss-cpu",
        "--quiet",
        cwd=s["dir"],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(out) and "µAP                : 1.00000" in result.stdout
    assert read_manifest(out)["local_evaluation"]["muap"] == pytest.approx(1.0)

    result = isc_submit(
        "score",
        out,
        "--gt",
        s["gt1"],
        "--json",
        "--max-results",
        "20",
        "--backend",
        "faiss-cpu",
        "--write-predictions",
        s["dir"] / "scored.csv",
        cwd=s["dir"],
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_predictions"] == 20 and summary["muap"] == pytest.approx(
        1.0
    )  # 20 of the 20 planted pairs
    assert len(read_predictions(s["dir"] / "scored.csv")) == 20

    # phase 2 with references that are not phase 1's: exit 2, violations listed, nothing written
    changed = s["reference_array"].copy()
    changed[3] *= -1
    write_descriptors(s["dir"] / "r2.h5", [f"R{i:06d}" for i in range(200)], changed, ATTRS)
    result = isc_submit(
        "descriptors",
        "--query",
        s["query2"],
        "--reference",
        s["dir"] / "r2.h5",
        "--phase",
        "2",
        "--phase1-reference",
        s["reference"],
        "--expected-queries",
        s["ids"],
        "--expected-references",
        s["refs"],
        cwd=s["dir"],
    )
    assert result.returncode == 2 and "1 reference descriptors differ from phase 1" in result.stderr
    assert "R000003" in result.stderr and not (s["dir"] / "submissions").exists()


def test_mini_dataset_extracted_both_phases_cli(mini_dataset, tmp_path):
    """isc-extract (PDQ, 256 bits) on the mini dataset, then both phases through the CLI, phase 2 reusing
    phase 1's reference file; the µAP printed equals a brute-force global cut scored independently."""
    from isc.extract.extraction import extract
    from isc.extract.image_files import list_split_images
    from isc.models import create_model

    model = create_model("pdq")
    queries = list_split_images(mini_dataset, "query")
    extract(list_split_images(mini_dataset, "reference"), tmp_path / "reference.h5", model, device="cpu",
            workers=0, quiet=True)
    for phase in (1, 2):
        lo, hi = (0, 49_999) if phase == 1 else (50_000, 99_999)
        mine = {q: path for q, path in queries.items() if lo <= int(q[1:]) <= hi}
        extract(mine, tmp_path / f"query{phase}.h5", model, device="cpu", workers=0, quiet=True)
    for phase, gt in ((1, "ground_truth.csv"), (2, "ground_truth_phase2.csv")):
        reuse = ["--phase1-reference", tmp_path / "submissions" / "phase1_descriptors.h5"] if phase == 2 else []
        result = isc_submit("descriptors", "--query", tmp_path / f"query{phase}.h5", "--reference",
                            tmp_path / "reference.h5", "--phase", phase, *reuse, "--gt", mini_dataset / gt, "--json",
                            "--expected-queries", mini_dataset / "query_metadata.csv", "--backend", "faiss-cpu",
                            "--expected-references", mini_dataset / "reference_metadata.csv", "--quiet", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        path, summary = result.stdout.splitlines()
        query_ids, query, reference_ids, reference = read_descriptor_track(tmp_path / path)
        pairs = brute_force_cut(query, reference, 10 * len(query_ids))
        predictions = pd.DataFrame(
            [(query_ids[q], reference_ids[r], -float(((query[q] - reference[r]) ** 2).sum())) for q, r in pairs],
            columns=["query_id", "reference_id", "score"])
        expected = evaluate(predictions, read_ground_truth(mini_dataset / gt))
        assert json.loads(summary)["muap"] == pytest.approx(expected.muap, abs=1e-9)
        assert read_manifest(tmp_path / path)["query_attributes"]["model"] == "pdq"
