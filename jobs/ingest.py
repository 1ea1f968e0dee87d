"""spark-submit entry point: load the user's Parquet/CSV files into the input tables (``botwatch ingest``).

    spark-submit ... jobs/ingest.py --conf conf/cluster.yaml --accounts s3a://in/accounts \\
        --events s3a://in/events --edges s3a://in/edges [--labels F] [--date YYYY-MM-DD]

A missing file or required column exits 2 with a message naming it.
"""
import datetime as dt
import sys

from botwatch.config import resolve_path
from botwatch.entry import job_conf, job_parser
from botwatch.ingest import IngestInputError, bad_share_limits, format_report, ingest_files, resolve_input
from botwatch.spark import get_spark


def main(argv: list[str] | None = None) -> int:
    parser = job_parser((__doc__ or "").splitlines()[0], with_date=False)
    parser.add_argument("--accounts", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--edges", required=True)
    parser.add_argument("--labels")
    parser.add_argument("--date", type=dt.date.fromisoformat,
                        help="quarantine run date and last day of valid timestamps, YYYY-MM-DD (default today, UTC)")
    args = parser.parse_args(argv)
    conf = job_conf(args)  # a bad conf exits 2
    try:
        for table in ("accounts", "events", "edges", "labels"):
            if getattr(args, table) is not None:
                resolve_input(table, getattr(args, table))  # fail fast, before the session starts
        spark = get_spark(conf, app_name="ingest")
        result = ingest_files(
            spark,
            resolve_path(conf["warehouse"]),
            accounts=args.accounts,
            events=args.events,
            edges=args.edges,
            labels=args.labels,
            run_date=args.date or dt.datetime.now(dt.UTC).date(),
            **bad_share_limits(conf),
        )
    except IngestInputError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
