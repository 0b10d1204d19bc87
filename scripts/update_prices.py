"""Regenerate spendgate's shipped price data from the community catalog.

    python scripts/update_prices.py [--from PATH_OR_URL_OR_WHEEL] [--out FILE] [--date YYYY-MM-DD]

Without --from, the latest litellm wheel is fetched with ``pip download --no-deps litellm``
(the catalog ships inside it) and its version is recorded in the data file.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

from spendgate.pricing.community import (
    CORRECTIONS_PATH,
    CommunityCatalogError,
    apply_corrections,
    build_document,
    convert_catalog,
    dump_document,
    load_community_source,
    load_corrections,
    parse_community_json,
    sha256_hex,
    today,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "spendgate" / "pricing" / "data" / "prices.json"


def download_wheel(directory: Path) -> Path:
    """The newest litellm wheel, through pip (the registry's ordinary client)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "litellm"]
    completed = subprocess.run(
        [*command, "-d", str(directory)], capture_output=True, text=True, check=False, timeout=600
    )
    if completed.returncode != 0:
        raise CommunityCatalogError(f"pip download litellm failed: {completed.stderr.strip()[-2000:]}")
    wheels = sorted(directory.glob("litellm-*.whl"))
    if not wheels:
        raise CommunityCatalogError(f"pip download litellm left no wheel in {directory}")
    return wheels[-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--from",
        dest="source",
        help="community JSON path, litellm wheel path, or http(s) URL (default: pip download litellm)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"data file to write (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--date", help="conversion date to record, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument(
        "--corrections", type=Path, default=CORRECTIONS_PATH, help="reviewed corrections file to apply"
    )
    args = parser.parse_args(argv)
    if args.date is not None:
        try:
            datetime.date.fromisoformat(args.date)
        except ValueError:
            parser.error(f"--date: expected YYYY-MM-DD, got {args.date!r}")
    return args


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="spendgate-prices-") as tmp:
        source = args.source or str(download_wheel(Path(tmp)))
        data, origin, version = load_community_source(source)
    result = convert_catalog(parse_community_json(data, origin=origin))
    apply_corrections(result, load_corrections(args.corrections))
    document = build_document(
        result, origin=origin, version=version, sha256=sha256_hex(data), date=args.date or today()
    )
    text = dump_document(document)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"source: {origin} ({version}), sha256 {document['source']['sha256'][:16]}...")
    for line in result.summary(top=15):
        print(line)
    print(f"wrote {args.out} ({len(text.encode('utf-8')):,} bytes)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except CommunityCatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
