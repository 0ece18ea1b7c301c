"""The demo: the mini dataset generated, served by a local S3 server on loopback, and run through the whole
pipeline (``isc-run --demo``); a second run skips every step, the server included.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from isc.core.competition import DEFAULT_REGION, SPLITS, bucket_for_region, metadata_file, split_folder
from isc.core.tables import read_metadata
from isc.download.local_copy import VerifiedIndex, check_folder
from isc.download.s3server import LocalS3Server
from isc.pipeline.config import RunConfig
from isc.pipeline.run import Pipeline
from isc.pipeline.summary import RunSummary, Step
from isc.synth.dataset import MANIFEST, generate_dataset, read_manifest

DEMO_IMAGE_SIZE = 160  # sscd's 288 matched no better on the mini dataset, at 3x the pixels (docs/BENCHMARKS.md)


def downloaded(dataset: Path, data: Path) -> bool:
    """Whether ``data`` holds every image of ``dataset`` (an isc-synth folder), each verified against its MD5
    (files verified before are trusted from the download's journal while unchanged)."""
    for split in SPLITS:
        if not metadata_file(dataset, split).is_file():
            return False
        metadata = read_metadata(metadata_file(dataset, split), split)
        expected = dict(zip(metadata["s3_uri"].str.rpartition("/")[2], metadata["md5_checksum"], strict=True))
        folder = split_folder(data, split)
        check = check_folder(folder, expected, set(expected), VerifiedIndex(folder))
        if check.missing or check.corrupt:
            return False
    return True


def run_demo(config: RunConfig, seed: int = 0, **sizes: int) -> RunSummary:
    """The pipeline on a synthetic mini dataset, generated into ``work/mini`` (once) and served by a local S3
    server: downloaded, described, searched, scored against its ground truth and submitted for both phases.

    ``sizes``: :func:`isc.synth.dataset.generate_dataset`'s ``references``, ``queries``, ``phase2_queries``, ``training``.
    """
    work = Path(config.work)
    mini = work / "mini"
    params = {"seed": seed, **sizes}
    began = time.perf_counter()
    manifest = read_manifest(mini) if (mini / MANIFEST).is_file() else {}
    fresh = manifest.get("complete") and manifest.get("params") == {**manifest.get("params", {}), **params}
    counts = manifest["summary"] if fresh else generate_dataset(mini, quiet=config.quiet, **params)
    images = counts["references"] + counts["training"] + counts["queries"] + counts["phase2_queries"]
    steps = [Step("synth", "mini dataset", images, round(time.perf_counter() - began, 2), bool(fresh),
                  "up to date" if fresh else f"generated in {mini}")]
    began = time.perf_counter()
    data, ground_truth = work / "data", [mini / "ground_truth.csv", mini / "ground_truth_phase2.csv"]
    if downloaded(mini, data):
        # an earlier run downloaded and verified every image: no server to start and fill again
        steps.append(Step("serve", "local S3", None, 0.0, True, f"not needed: {data} is complete and verified"))
        pipeline = Pipeline(replace(config, data=data, ground_truth=ground_truth))
        pipeline.summary.steps.extend(steps)
        return pipeline.run()
    with LocalS3Server(mini, regions=[DEFAULT_REGION], quiet=config.quiet) as server:
        steps.append(Step("serve", "local S3", None, round(time.perf_counter() - began, 2), False,
                          f"{server.endpoint_url} (bucket {bucket_for_region(DEFAULT_REGION)})"))
        # the caller's config stays as it was: the demo runs a copy pointed at its own server and ground truth
        download = replace(config.download, endpoint_url=server.endpoint_url, region=DEFAULT_REGION)
        demo = replace(config, download=download, data=None, ground_truth=ground_truth)
        pipeline = Pipeline(demo)
        pipeline.summary.steps.extend(steps)
        return pipeline.run()
