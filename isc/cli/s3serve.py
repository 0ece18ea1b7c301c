"""isc-s3serve: serve a dataset folder as the competition's regional buckets on a local S3 server."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from isc.cli.common import check_outputs, port_number, run_command
from isc.core.competition import REGIONS, SPLITS, images_prefix
from isc.core.files import atomic_path
from isc.download.s3server import LocalS3Server


def port_or_zero(text: str) -> int:
    """A port to bind: 1-65535, or 0 for any free one."""
    if text.strip() == "0":
        return 0
    try:
        return port_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a port is 1-65535 (or 0: any free port), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-s3serve",
        description="Serve a folder in the competition's layout (<split>_images/<id>.jpg, <split>_metadata.csv) "
        f"as the competition's regional buckets ({', '.join(region.bucket for region in REGIONS.values())}; "
        f"images under {images_prefix('<split>')}) on a local S3 server bound to loopback. Anonymous reads work, "
        "as on the real buckets. Runs until interrupted. Needs moto's server mode: pip install 'isc[server]'.",
    )
    parser.add_argument("data", help="dataset folder, e.g. one written by isc-synth")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=port_or_zero, default=0,
                        help="port to bind, 1-65535; 0 picks a free one (default); a port in use is an error")
    parser.add_argument("--regions", nargs="+", choices=list(REGIONS), default=list(REGIONS),
                        help="regional buckets to create (default: all of them)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="splits to upload (default: all three)")
    parser.add_argument("--endpoint-file", metavar="PATH",
                        help="write the endpoint URL to this file once the buckets are filled (for scripts)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar while the buckets are filled")
    return parser


def run(args: argparse.Namespace) -> int:
    check_outputs(inputs=[args.data], outputs=[args.endpoint_file])
    server = LocalS3Server(args.data, regions=args.regions, splits=args.splits, host=args.host, port=args.port,
                           quiet=args.quiet)
    endpoint = server.start()
    try:
        if args.endpoint_file:
            with atomic_path(args.endpoint_file) as tmp:
                Path(tmp).write_text(endpoint + "\n")
        print(f"serving {args.data} at {endpoint} (buckets: {', '.join(REGIONS[r].bucket for r in args.regions)})",
              flush=True)
        threading.Event().wait()
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
