"""spark-submit entry point: write a synthetic platform's input tables and `truth` (``botwatch simulate``).

    spark-submit ... jobs/simulate.py --conf conf/cluster.yaml --accounts 10000000 --days 28 --seed 42 \\
        [--start-date YYYY-MM-DD] [--warehouse s3a://bucket/wh] [--set simulate.prevalence=0.05]

Bad arguments or knobs exit 2 with a message naming them.
"""
import datetime as dt
import sys

from botwatch.entry import job_conf, job_parser


def main(argv: list[str] | None = None) -> int:
    parser = job_parser((__doc__ or "").splitlines()[0], with_date=False)
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--days", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--start-date", type=dt.date.fromisoformat, help="YYYY-MM-DD (default simulate.start_date)")
    args = parser.parse_args(argv)
    conf = job_conf(args)  # a bad conf or knob exits 2

    from botwatch.config import resolve_path
    from botwatch.simulate import SimulationParamsError, check_params, write_platform
    from botwatch.spark import get_spark

    params = conf.section("simulate")
    try:
        start = args.start_date or dt.date.fromisoformat(str(params["start_date"]))
        shape = {"accounts": args.accounts, "days": args.days, "seed": args.seed, "start_date": start}
        check_params(**shape, params=params)
    except ValueError as exc:  # SimulationParamsError, or a start_date that is not a date
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    spark = get_spark(conf, app_name="simulate")
    try:
        counts = write_platform(spark, resolve_path(conf["warehouse"]), **shape, params=params)
    except SimulationParamsError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    for table, rows in counts.items():
        print(f"{table}: {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
