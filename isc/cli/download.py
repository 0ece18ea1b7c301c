"""isc-download: fetch a split of the competition's images from a regional bucket, MD5-verified and resumable."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from isc.cli.common import check_outputs, non_negative_int, positive_int, run_command
from isc.cli.options import add_retry_options, add_s3_options, download_options
from isc.core.competition import AUTO_REGION, REGION_CHOICES, REGIONS, SPLITS
from isc.core.files import InputError, check_file
from isc.download import s3
from isc.download.sync import DownloadReport, sync_split


class _FilterAction(argparse.Action):
    """--include and --exclude share one ordered list: with the AWS CLI, the later matching filter wins."""

    def __call__(self, parser, namespace, value, option_string=None):  # noqa: ARG002
        namespace.filters = [*(namespace.filters or []), (self.const, value)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isc-download",
        description="Download the competition's images of one split from a regional S3 bucket "
        "(drivendata-competition-fb-isc-data[-eu|-asia], prefix all/<split>_images/) to DEST/<split>_images/<id>.jpg. "
        "Every file is checked against the MD5 of the metadata CSV; files are written under a temporary name and "
        "renamed once verified, so an interrupted run re-run with the same arguments fetches only what is missing "
        "or wrong. Exit status 0 only when every selected file is present and verified; 1 when some are not, or "
        "when the endpoint did not answer (re-run later to resume); 2 on bad arguments or an unreachable endpoint.",
    )
    parser.add_argument("--region", choices=REGION_CHOICES,
                        help="bucket to read: us-west, eu (Frankfurt), asia (Singapore), or auto: time a small "
                        "request to each and use the fastest; required unless --endpoint-url (or $AWS_ENDPOINT_URL) "
                        f"names a mirror, where it defaults to {s3.DownloadOptions.region}")
    parser.add_argument("--split", required=True, choices=SPLITS, help="which images to fetch")
    parser.add_argument("--dest", required=True, metavar="DIR", help="destination folder; images go to DIR/<split>_images/")
    parser.add_argument("--metadata", metavar="CSV",
                        help="the split's metadata CSV (image_id,s3_uri,md5_checksum) from the competition's data page; "
                        "default: fetch all/<split>_metadata.csv from the bucket (a mirror such as isc-s3serve has it) and keep it "
                        "as DIR/<split>_metadata.csv, which --verify-only then reuses offline")
    add_s3_options(parser)
    parser.add_argument("--include", dest="filters", action=_FilterAction, const="include", metavar="PATTERN",
                        help="include object names matching PATTERN (e.g. 'Q00*.jpg'); repeatable. Same rule as "
                        "the AWS CLI: all files are included unless excluded, and later filters override earlier "
                        "ones, so select a subset with --exclude '*' --include 'Q00*'")
    parser.add_argument("--exclude", dest="filters", action=_FilterAction, const="exclude", metavar="PATTERN",
                        help="exclude object names matching PATTERN (*, ?, [seq] as in fnmatch); repeatable")
    parser.add_argument("--ids", action="append", default=[], metavar="FIRST-LAST",
                        help="only ids in this inclusive range (e.g. Q00000-Q00999) or this single id; repeatable")
    parser.add_argument("--limit", type=non_negative_int, metavar="N", help="only the first N selected ids (in id order)")
    parser.add_argument("--verify-only", action="store_true",
                        help="download nothing: re-hash the selected local files and list missing, corrupt and "
                        "extra files; exit status 1 if any selected file is missing or corrupt")
    parser.add_argument("--repair", action="store_true",
                        help="with --verify-only: then fetch the missing and corrupt files")
    parser.add_argument("--rehash", action="store_true",
                        help="re-hash every local file instead of trusting the record of files verified by earlier "
                        "runs (kept in DIR/<split>_images/.isc-verified.tsv, valid while size and mtime are unchanged)")
    parser.add_argument("--workers", type=positive_int, default=s3.DownloadOptions.workers,
                        help=f"parallel downloads (threads and pooled connections; default {s3.DownloadOptions.workers})")
    add_retry_options(parser)
    parser.add_argument("--report", metavar="JSON",
                        help="machine-readable report (downloaded, skipped, failed with reasons, bytes, seconds); "
                        "default DIR/<split>_download_report.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.repair and not args.verify_only:
        raise InputError("--repair goes with --verify-only (a plain run already fetches missing and corrupt files)")
    # a mirror serves every region's bucket, as isc-s3serve does: the default region's will do
    if args.region is None and not s3.endpoint_url_or_environment(args.endpoint_url):
        raise InputError(f"--region is required ({', '.join(REGIONS)} or {AUTO_REGION}) unless --endpoint-url "
                         "names a mirror")
    if args.metadata:
        check_file(args.metadata, "metadata file")
    check_outputs(inputs=[args.metadata], outputs=[args.report], folders=[args.dest])


def _warn_about_leading_includes(filters: list[tuple[str, str]]) -> None:
    """With the AWS CLI's rule an --include before any --exclude selects nothing more: say so."""
    leading = []
    for kind, pattern in filters:
        if kind == "exclude":
            break
        leading.append(pattern)
    if leading:
        shown = " ".join(f"--include {p!r}" for p in leading)
        warnings.warn(f"{shown} before any --exclude changes nothing (every file is included unless excluded, "
                      f"as with the AWS CLI); to select only these files use --exclude '*' {shown}", stacklevel=2)


def _summary(report: DownloadReport, report_path: Path) -> str:
    lines = [f"{report.selected} selected: {report.downloaded} downloaded ({report.bytes / 1e6:,.1f} MB in "
             f"{report.seconds:.1f} s), {report.skipped} already verified, {len(report.failed)} failed"]
    if report.verify_only:
        lines.append(f"missing {len(report.missing)}, corrupt {len(report.corrupt)}, extra {len(report.extra)}")
        lines += [f"  {state}: {name}" for state in ("missing", "corrupt", "extra") for name in getattr(report, state)[:20]]
    lines += [f"  failed {f['id']}: {f['reason']}" for f in report.failed[:20]]
    if report.aborted:
        lines.append(f"{report.aborted}; re-run the same command to resume")
    if len(report.failed) > 20:
        lines.append(f"  ... {len(report.failed) - 20} more failures")
    lines.append(f"report: {report_path}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    options = download_options(args, args.workers, verify_only=args.verify_only, repair=args.repair,
                               rehash=args.rehash)
    _warn_about_leading_includes(args.filters or [])

    try:
        report, report_path = sync_split(
            args.split, args.dest, options, metadata_path=args.metadata, filters=args.filters or (),
            id_ranges=args.ids, limit=args.limit, report_path=args.report, quiet=args.quiet,
        )
    except s3.EndpointUnresponsive as e:  # not bad input: the download did not happen, a re-run may work
        print(f"isc-download: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(_summary(report, report_path), file=sys.stderr)
    if report.selected == 0:  # nothing to download is no success: the listing or the selection is wrong
        print(f"isc-download: error: no {args.split} image selected (the metadata lists none, or --ids, "
              "--include/--exclude and --limit left none)", file=sys.stderr)
        return 1
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
