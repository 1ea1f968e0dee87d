"""spark-submit entry point: load the user's Parquet/CSV files into the input tables (``botwatch ingest``).

    spark-submit ... jobs/ingest.py --conf conf/cluster.yaml --accounts s3a://in/accounts \\
        --events s3a://in/events --edges s3a://in/edges [--labels F] [--date YYYY-MM-DD]

A missing file or required column exits 2 with a message naming it.
"""
import argparse
import datetime as dt
import os
import sys

from botwatch.config import DEFAULT_CONF, ConfigError, load_config, resolve_path
from botwatch.ingest import IngestInputError, format_report, ingest_files, resolve_input
from botwatch.spark import get_spark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--conf", default=DEFAULT_CONF)
    parser.add_argument("--warehouse")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--accounts", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--edges", required=True)
    parser.add_argument("--labels")
    parser.add_argument("--date", type=dt.date.fromisoformat, help="YYYY-MM-DD (default today, UTC)")
    args = parser.parse_args(argv)
    warehouse = args.warehouse if not args.warehouse or "://" in args.warehouse else os.path.abspath(args.warehouse)
    overrides = args.overrides + ([f"warehouse={warehouse}"] if warehouse else [])
    try:
        conf = load_config(args.conf, overrides)
        for table in ("accounts", "events", "edges", "labels"):
            if getattr(args, table) is not None:
                resolve_input(table, getattr(args, table))  # fail fast, before the session starts
        spark = get_spark(conf, app_name="botwatch-ingest")
        result = ingest_files(
            spark,
            resolve_path(conf["warehouse"]),
            accounts=args.accounts,
            events=args.events,
            edges=args.edges,
            labels=args.labels,
            run_date=args.date or dt.datetime.now(dt.UTC).date(),
        )
    except (ConfigError, IngestInputError) as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
