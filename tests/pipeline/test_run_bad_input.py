"""isc-run against bad input: an output onto its ground truth, numbers checked when parsed, and a reference
image replaced since the last run described again."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from isc.cli.run import main as run_main
from isc.core.descriptors import read_descriptors
from isc.extract.extraction import ExtractOptions
from isc.pipeline.run import Pipeline, RunConfig

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


RUN_FAST = ["--model", "resnet10t", "--quiet"]


def _descriptors(path: Path) -> dict[str, np.ndarray]:
    ids, descriptors, _ = read_descriptors(path)
    return dict(zip(ids, descriptors, strict=True))


def test_isc_run_refuses_an_output_onto_its_ground_truth(tmp_path, capsys):
    work = tmp_path / "work"
    truth = work / "predictions_phase1.csv"  # what the run would write over
    truth.parent.mkdir()
    truth.write_text("query_id,reference_id\n")
    assert run_main([str(work), "--gt", str(truth), "--submissions-dir", str(tmp_path / "sub"), *RUN_FAST]) == 2
    one_line_error(capsys.readouterr().err, "isc-run", f"is the input {truth}")
    (tmp_path / "file").write_text("")
    assert run_main([str(tmp_path / "file"), "--submissions-dir", str(tmp_path / "sub"), *RUN_FAST]) == 2
    one_line_error(capsys.readouterr().err, "isc-run", "exists and is not a directory")


@pytest.mark.parametrize(("option", "value"), [
    ("--limit", "0"), ("--training-limit", "0"), ("--image-size", "0"), ("--workers", "-1"), ("--batch-size", "0"),
    ("--k", "0"), ("--pca-dim", "-3"), ("--download-workers", "0"),
])
def test_run_numbers_are_checked_when_parsed(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        run_main([str(tmp_path / "work"), option, value])
    assert exit_status.value.code == 2 and f"argument {option}: must be" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("scales", ["1,0", "nan,1", "1,inf"])
def test_run_scales_are_positive_finite_numbers(scales, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        run_main([str(tmp_path / "work"), "--scales", scales])
    assert exit_status.value.code == 2
    assert f"argument --scales: '{scales}' is not a comma-separated list of positive numbers" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_isc_run_extracts_again_a_replaced_reference_image(mini_dataset, tmp_path):
    data_root = tmp_path / "data"
    for split in ("query", "reference", "training"):
        (data_root / f"{split}_images").mkdir(parents=True)
        for image in sorted((mini_dataset / f"{split}_images").glob("*.jpg"))[:4]:
            shutil.copy(image, data_root / f"{split}_images" / image.name)
    # fixed weights (a random init would differ between runs, and rightly never be up to date)
    config = RunConfig(work=tmp_path / "work", data=data_root, model="efficientnet_lite0", image_size=32,
                       extraction=ExtractOptions(workers=0), quiet=True)

    def extract_steps() -> dict[str, bool]:
        pipeline = Pipeline(config)
        pipeline.extract()
        return {step.target: step.skipped for step in pipeline.summary.steps}

    assert not any(extract_steps().values())
    assert all(extract_steps().values())
    reference = tmp_path / "work" / "descriptors" / "reference.h5"
    before = _descriptors(reference)
    replaced = data_root / "reference_images" / "R000000.jpg"
    shutil.copy(data_root / "training_images" / "T000000.jpg", replaced)
    assert extract_steps() == {"query phase 1": True, "query phase 1 crops": True, "reference": False,
                               "training": True}
    after = _descriptors(reference)
    assert not np.allclose(before["R000000"], after["R000000"])
    np.testing.assert_allclose(before["R000001"], after["R000001"], atol=1e-5)
