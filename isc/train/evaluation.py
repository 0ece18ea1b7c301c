"""A model's µAP during training, through the stages' own functions: extraction, search, the organisers' score."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from isc.core.tables import read_ground_truth
from isc.extract.extraction import extract
from isc.extract.image_files import list_split_images
from isc.search.matching import search_files

SPLITS = ("query", "reference", "training")


def evaluate_model(model: nn.Module, eval_data: str | Path, work_dir: str | Path, device: str = "cpu",
                   workers: int | None = None, quiet: bool = True) -> dict[str, float] | None:
    """µAP of ``model`` on an isc-synth dataset, with and without score normalisation by its training images.

    Descriptors go through :func:`isc.extract.extraction.extract` (into ``work_dir``), predictions through
    :func:`isc.search.matching.search_files` (CSVs in ``work_dir``), both on ``device``; under ``torchrun`` every process extracts a
    shard and the first one scores (the others get None).
    """
    from isc.evaluate.metrics import evaluate  # needs pandas, which training without --eval-data does not

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ground_truth = read_ground_truth(Path(eval_data) / "ground_truth.csv")
    scored = set(ground_truth["query_id"])
    files = {split: work_dir / f"{split}.h5" for split in SPLITS}
    for split in SPLITS:
        images = {i: p for i, p in list_split_images(eval_data, split).items() if split != "query" or i in scored}
        # a copy: extraction converts the model (half precision on a GPU, channels-last)
        extracted = extract(images, files[split], copy.deepcopy(model), device=device, workers=workers, resume=False,
                            quiet=quiet)
    if extracted.rank != 0:
        return None
    plain, _ = search_files(files["query"], files["reference"], work_dir / "predictions.csv", quiet=True,
                            device=device)
    normalized, _ = search_files(files["query"], files["reference"], work_dir / "predictions_normalized.csv",
                                 files["training"], quiet=True, device=device)
    return {"muap": evaluate(plain.to_frame(), ground_truth).muap,
            "muap_normalized": evaluate(normalized.to_frame(), ground_truth).muap}
