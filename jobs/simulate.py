"""spark-submit entry point: write a synthetic platform's input tables and `truth` (``botwatch simulate``).

    spark-submit ... jobs/simulate.py --conf conf/cluster.yaml --accounts 10000000 --days 28 --seed 42 \\
        [--start-date YYYY-MM-DD] [--warehouse s3a://bucket/wh] [--set simulate.prevalence=0.05]

Bad arguments or knobs exit 2 with a message naming them.
"""
import argparse
import datetime as dt
import sys

from botwatch.config import DEFAULT_CONF, ConfigError, load_config, resolve_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--conf", default=DEFAULT_CONF)
    parser.add_argument("--warehouse")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--days", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--start-date", type=dt.date.fromisoformat, help="YYYY-MM-DD (default simulate.start_date)")
    args = parser.parse_args(argv)
    overrides = args.overrides + ([f"warehouse={args.warehouse}"] if args.warehouse else [])

    from botwatch.simulate import SimulationParamsError, check_params, write_platform
    from botwatch.spark import get_spark

    try:
        conf = load_config(args.conf, overrides)
        params = conf.section("simulate")
        start = args.start_date or dt.date.fromisoformat(str(params["start_date"]))
        shape = {"accounts": args.accounts, "days": args.days, "seed": args.seed, "start_date": start}
        check_params(**shape, params=params)
        spark = get_spark(conf, app_name="botwatch-simulate")
        counts = write_platform(spark, resolve_path(conf["warehouse"]), **shape, params=params)
    except (ConfigError, SimulationParamsError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    for table, rows in counts.items():
        print(f"{table}: {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
