"""Download throughput: isc-download (MD5 of every file verified) against `aws s3 cp --recursive`.

Both fetch the same objects (random bytes of JPEG size, with their real MD5s in the metadata CSV) from
the same local S3 server, running in its own process so that it does not share the clients' GIL, one
after the other in the same run. Each client is timed from its start to its exit, as a user sees it.

    python scripts/bench_download.py [--files 3000] [--size-kb 150] [--repeats 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.competition import REGIONS, images_prefix
from isc.core.tables import write_metadata

BUCKET = REGIONS["us-west"].bucket


def make_objects(root: Path, n_files: int, size_kb: int, seed: int = 0) -> int:
    """``root/query_images/Qxxxxx.jpg`` of random bytes (sizes ±30% around ``size_kb``) and their metadata CSV."""
    rng = np.random.default_rng(seed)
    folder = root / "query_images"
    folder.mkdir(parents=True)
    rows, total = [], 0
    for i in range(n_files):
        body = rng.bytes(int(size_kb * 1000 * rng.uniform(0.7, 1.3)))
        name = f"Q{i:05d}"
        (folder / f"{name}.jpg").write_bytes(body)
        rows.append((name, f"s3://{BUCKET}/{images_prefix('query')}{name}.jpg", hashlib.md5(body).hexdigest()))
        total += len(body)
    write_metadata(root / "query_metadata.csv", pd.DataFrame(rows, columns=["image_id", "s3_uri", "md5_checksum"]))
    return total


def serve(data: str, endpoint_file: str) -> int:
    """The server process: isc-s3serve, minus a per-request cost of moto's dispatcher.

    moto lists its own package folder (about 180 stat calls) under a global lock on every request to
    find the backend; cached, the server answers several times faster, so that the benchmark measures
    the clients rather than the server.
    """
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    from isc.cli import s3serve

    return s3serve.main([data, "--splits", "query", "--regions", "us-west", "--endpoint-file", endpoint_file])


def start_server(data: Path, work: Path) -> tuple[subprocess.Popen, str]:
    endpoint_file = work / "endpoint"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(data), str(endpoint_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not endpoint_file.is_file():
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise SystemExit("the local S3 server did not start")
        time.sleep(0.2)
    return server, endpoint_file.read_text().strip()


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a running process (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(command: list[str], server_pid: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the client, CPU seconds of the server) of a command that must succeed."""
    before, server_before = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(server_pid)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, client, cpu_seconds(server_pid) - server_before


def run_isc(endpoint: str, server_pid: int, metadata: Path, dest: Path, workers: int, n_files: int) -> tuple:
    seconds = timed([sys.executable, "-m", "isc.cli.download", "--region", "us-west", "--split", "query",
                     "--dest", str(dest), "--endpoint-url", endpoint, "--metadata", str(metadata),
                     "--workers", str(workers), "--quiet"], server_pid)
    report = json.loads((dest / "query_download_report.json").read_text())
    assert report["downloaded"] == n_files and report["ok"], report
    return seconds


def run_aws(endpoint: str, server_pid: int, dest: Path, n_files: int) -> tuple:
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        raise SystemExit("the AWS CLI is not installed (pip install awscli)")
    seconds = timed([aws, "s3", "cp", "--recursive", "--no-sign-request", "--only-show-errors",
                     "--endpoint-url", endpoint, f"s3://{BUCKET}/{images_prefix('query')}", str(dest)], server_pid)
    assert len(list(dest.iterdir())) == n_files
    return seconds


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        raise SystemExit(serve(sys.argv[2], sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000, help="objects to fetch (default 3000)")
    parser.add_argument("--size-kb", type=int, default=150, help="mean object size in kB (default 150)")
    parser.add_argument("--workers", type=int, default=16, help="isc-download --workers (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each client, alternated; best kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="isc-bench-download-") as tmp:
        work = Path(tmp)
        total_bytes = make_objects(work / "data", args.files, args.size_kb)
        server, endpoint = start_server(work / "data", work)
        try:
            results: dict[str, list[tuple[float, float, float]]] = {"isc-download": [], "aws s3 cp": []}
            for i in range(args.repeats):
                for tool in (("isc-download", "aws s3 cp") if i % 2 == 0 else ("aws s3 cp", "isc-download")):
                    dest = work / f"out-{tool.split()[0]}-{i}"
                    if tool == "isc-download":
                        results[tool].append(run_isc(endpoint, server.pid, work / "data" / "query_metadata.csv", dest,
                                                     args.workers, args.files))
                    else:
                        results[tool].append(run_aws(endpoint, server.pid, dest / "query_images", args.files))
                    shutil.rmtree(dest)
        finally:
            server.terminate()
            server.wait()

    print(f"{args.files} objects, {total_bytes / 1e6:.0f} MB (mean {total_bytes / args.files / 1e3:.0f} kB), "
          f"local S3 server in its own process, {os.cpu_count()} CPUs, best of {args.repeats}")
    print("| client | MD5 verified | seconds | files/s | MB/s | client CPU ms/file (start-up included) | server CPU ms/file |")
    print("|---|---|---|---|---|---|---|")
    best = {}
    for tool, runs in results.items():
        wall, cpu, server_cpu = min(runs)
        best[tool] = args.files / wall
        verified = "yes, every file" if tool == "isc-download" else "no"
        print(f"| `{tool}` | {verified} | {wall:.2f} | {args.files / wall:.0f} | {total_bytes / 1e6 / wall:.1f} | "
              f"{cpu / args.files * 1e3:.2f} | {server_cpu / args.files * 1e3:.2f} |")
    print(f"isc-download / aws s3 cp (files/s): {best['isc-download'] / best['aws s3 cp']:.2f}x")


if __name__ == "__main__":
    main()
