"""The ``botwatch`` command line (also ``python -m botwatch``).

Every command takes ``--conf`` (default ``conf/local.yaml``), ``--warehouse`` and repeated
``--set key=value``. Configuration problems exit with code 2 and a message naming the key.
Commands only parse, load conf, build the session and call one library function.
"""
from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from botwatch.config import DEFAULT_CONF, Config, ConfigError, typed_path
from botwatch.entry import load_checked_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="botwatch: nightly bot-detection scoring on Spark.")

ConfOpt = Annotated[str, typer.Option("--conf", help="environment conf file overlaid on conf/base.yaml")]
WarehouseOpt = Annotated[str | None, typer.Option("--warehouse", help="root of the Delta tables")]


@app.callback()
def _root() -> None:
    """botwatch: nightly bot-detection scoring on Spark."""


SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a knob: key=value (repeatable)")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"botwatch: {message}", err=True)
    raise typer.Exit(code)


def build_conf(conf: str, warehouse: str | None, overrides: list[str] | None) -> Config:
    sets = list(overrides or [])
    if warehouse:
        sets.append(f"warehouse={typed_path(warehouse)}")
    try:
        return load_checked_config(conf, sets)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


@app.command()
def doctor(conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None, set_: SetOpt = None) -> None:
    """Report versions and check a real Delta write/read and a GraphFrames call."""
    from botwatch.doctor import run_doctor

    ok = run_doctor(build_conf(conf, warehouse, set_), echo=typer.echo)
    raise typer.Exit(0 if ok else 1)


DateOpt = Annotated[str, typer.Option("--date", help="logical run date, YYYY-MM-DD")]


def parse_date(value: str, option: str = "--date"):
    import datetime as dt

    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r}: expected a date as YYYY-MM-DD")


StepOpt = Annotated[
    list[str] | None, typer.Option("--step", help="run only this step (repeatable; default: every step in order)")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="rerun steps even when done and their inputs are unchanged")]


def _run_steps(date: str, names: list[str] | None, force: bool, conf: str, warehouse: str | None,
               set_: list[str] | None) -> tuple[Any, dict[str, dict]]:
    """Steps for one date through the nightly runner (date lock, skip when done, run log), as
    ``botwatch run`` and the jobs run them; exit 3 when the date is locked, 1 on an expected failure."""
    from botwatch import nightly, steps
    from botwatch.spark import get_spark

    cfg = build_conf(conf, warehouse, set_)
    run_date = parse_date(date)
    try:
        steps.run_order(names or steps.RUN_ORDER)
    except ValueError as exc:
        fail(f"--step {names}: {exc}")
    label = names[0] if names and len(names) == 1 else "run"
    spark = get_spark(cfg, app_name=f"{label}-{run_date}")
    try:
        return run_date, nightly.run_steps(spark, cfg, run_date, names or None, force=force, echo=typer.echo)
    except nightly.RunLockedError as exc:
        fail(str(exc), code=3)
    except nightly.StepFailedError as exc:
        if isinstance(exc.__cause__, steps.EXPECTED_ERRORS):
            fail(str(exc), code=1)
        raise
    raise AssertionError("unreachable")


def _one_step(step: str, date: str, force: bool, conf: str, warehouse: str | None, set_: list[str] | None) -> None:
    import json

    from botwatch.entry import step_report
    from botwatch.nightly import STATUS_WAITING

    run_date, results = _run_steps(date, [step], force, conf, warehouse, set_)
    typer.echo(json.dumps(step_report(step, run_date, results), default=str))
    waiting = [f"{s}: {r.get('reason')}" for s, r in results.items() if r["status"] == STATUS_WAITING]
    if waiting:  # nothing was done: a script checking the exit code must not take it for done
        fail(f"{step} for {run_date} is waiting ({'; '.join(waiting)})", code=1)


@app.command()
def features(date: DateOpt, force: ForceOpt = False, conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None,
             set_: SetOpt = None) -> None:
    """Build activity_daily (as needed) and the features partition for one run date."""
    _one_step("features", date, force, conf, warehouse, set_)


@app.command()
def train(date: DateOpt, force: ForceOpt = False, conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None,
          set_: SetOpt = None) -> None:
    """Train a challenger on labels up to the date, evaluate it and apply the promotion gate."""
    _one_step("train", date, force, conf, warehouse, set_)


@app.command()
def score(date: DateOpt, force: ForceOpt = False, conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None,
          set_: SetOpt = None) -> None:
    """Score every account of the date's features with the champion into `scores` (stage 1, then stage 2)."""
    _one_step("score", date, force, conf, warehouse, set_)


@app.command()
def run(
    date: DateOpt, step: StepOpt = None, force: ForceOpt = False,
    conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None, set_: SetOpt = None,
) -> None:
    """The nightly pipeline for one date: validate .. monitor. Finished steps whose inputs are unchanged are skipped."""
    import json

    typer.echo(f"run {date}")
    run_date, results = _run_steps(date, step, force, conf, warehouse, set_)
    typer.echo(json.dumps({"run_date": str(run_date), "steps": {k: v["status"] for k, v in results.items()}}))


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--start", help="first date, YYYY-MM-DD")],
    end: Annotated[str, typer.Option("--end", help="last date (inclusive), YYYY-MM-DD")],
    force: ForceOpt = False,
    conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None, set_: SetOpt = None,
) -> None:
    """`run` for every date from --start to --end, in order; dates already finished are skipped (resumable)."""
    from botwatch import nightly, steps
    from botwatch.spark import get_spark

    cfg = build_conf(conf, warehouse, set_)
    first, last = parse_date(start, "--start"), parse_date(end, "--end")
    if last < first:
        fail(f"--end {last} is before --start {first}")
    spark = get_spark(cfg, app_name=f"backfill-{first}-{last}")
    try:
        outcome = nightly.backfill(spark, cfg, first, last, force=force, echo=typer.echo)
    except nightly.RunLockedError as exc:
        fail(str(exc), code=3)
    except nightly.StepFailedError as exc:
        if isinstance(exc.__cause__, steps.EXPECTED_ERRORS):
            again = ("rerun from the failed date (--start): with --force the same backfill would recompute the "
                     "dates it finished" if force else "rerun the same backfill: finished dates are skipped")
            fail(f"{exc}. Fix it and {again}.", code=1)
        raise
    for day, what in outcome.items():
        typer.echo(f"{day}: {what}")


@app.command()
def unlock(date: DateOpt, conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None, set_: SetOpt = None) -> None:
    """Remove a date's run lock left by a run that was killed (check that no run for the date is alive)."""
    from botwatch import nightly
    from botwatch.config import warehouse_path
    from botwatch.spark import get_spark

    cfg = build_conf(conf, warehouse, set_)
    run_date = parse_date(date)
    held = nightly.break_lock(get_spark(cfg, app_name="unlock"), warehouse_path(cfg), run_date)
    typer.echo(f"lock of {run_date} {'removed' if held else 'was not held'}")


@app.command()
def ingest(
    accounts: Annotated[str, typer.Option("--accounts", help="accounts: .parquet, .csv or a folder of Parquet")],
    events: Annotated[str, typer.Option("--events", help="events: .parquet, .csv or a folder of Parquet")],
    edges: Annotated[str, typer.Option("--edges", help="follow edges: .parquet, .csv or a folder of Parquet")],
    labels: Annotated[str | None, typer.Option("--labels", help="labels (optional; left as is if absent)")] = None,
    date: Annotated[
        str | None, typer.Option("--date", help="run date of the quarantine rows, and the last day of valid timestamps "
                                   "(later ones are timestamp_in_future), YYYY-MM-DD (default today, UTC)")
    ] = None,
    conf: ConfOpt = DEFAULT_CONF,
    warehouse: WarehouseOpt = None,
    set_: SetOpt = None,
) -> None:
    """Load your own Parquet/CSV files into the input tables; bad rows go to `quarantine` with a reason."""
    import datetime as dt

    from botwatch.config import resolve_path
    from botwatch.ingest import IngestInputError, bad_share_limits, format_report, ingest_files, resolve_input
    from botwatch.spark import get_spark

    cfg = build_conf(conf, warehouse, set_)
    run_date = parse_date(date) if date else dt.datetime.now(dt.UTC).date()
    files = {"accounts": accounts, "events": events, "edges": edges, "labels": labels}
    root = resolve_path(cfg["warehouse"])
    try:
        for table, path in files.items():
            if path is not None:
                resolve_input(table, path)  # a missing file or column fails before a JVM starts
        spark = get_spark(cfg, app_name=f"ingest-{run_date}")
        result = ingest_files(
            spark, root, accounts=accounts, events=events, edges=edges, labels=labels, run_date=run_date,
            echo=typer.echo, **bad_share_limits(cfg),
        )
    except IngestInputError as exc:
        fail(str(exc))
    typer.echo(f"ingested into {root} (quarantine run_date {run_date})")
    typer.echo(format_report(result))


@app.command()
def simulate(
    accounts: Annotated[int, typer.Option("--accounts", help="number of accounts")],
    days: Annotated[int, typer.Option("--days", help="number of simulated days")],
    seed: Annotated[int, typer.Option("--seed", help="random seed: the same seed gives the same tables")],
    start_date: Annotated[
        str | None, typer.Option("--start-date", help="first simulated day, YYYY-MM-DD (default simulate.start_date)")
    ] = None,
    conf: ConfOpt = DEFAULT_CONF,
    warehouse: WarehouseOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic platform's input tables (accounts, events, edges, labels) and `truth`."""
    from botwatch.config import resolve_path
    from botwatch.simulate import SimulationParamsError, check_params, write_platform
    from botwatch.spark import get_spark

    cfg = build_conf(conf, warehouse, set_)
    params = cfg.section("simulate")
    start = parse_date(start_date or str(params["start_date"]), "--start-date")
    root = resolve_path(cfg["warehouse"])
    try:
        check_params(accounts=accounts, days=days, seed=seed, start_date=start, params=params)  # before a JVM starts
        spark = get_spark(cfg, app_name="simulate")
        counts = write_platform(spark, root, accounts=accounts, days=days, seed=seed, start_date=start, params=params)
    except SimulationParamsError as exc:
        fail(str(exc))
    typer.echo(f"simulated {accounts} accounts x {days} days from {start} (seed {seed}) into {root}")
    for table, rows in counts.items():
        typer.echo(f"  {table}: {rows} rows")


@app.command()
def demo(conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None, set_: SetOpt = None) -> None:
    """Simulate a small platform, run the nightly run on every simulated day; print where tables and report are."""
    from botwatch.demo import demo_conf, run_demo
    from botwatch.simulate import SimulationParamsError
    from botwatch.spark import get_spark

    # A small platform has few labels: the demo section sets its own investigator rate and minimums.
    try:
        cfg = demo_conf(build_conf(conf, warehouse, set_), set_ or [])
    except ConfigError as exc:  # a demo.* value the knob it sets refuses
        fail(str(exc))
    try:
        run_demo(get_spark(cfg, app_name="demo"), cfg, echo=typer.echo)
    except SimulationParamsError as exc:  # a warehouse of another platform, or a platform the simulator refuses
        fail(str(exc))


@app.command()
def report(date: DateOpt, conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None, set_: SetOpt = None) -> None:
    """Print the path of the run report (HTML) the monitor step wrote for the date."""
    from botwatch import files
    from botwatch.config import warehouse_path
    from botwatch.monitoring.run import report_path
    from botwatch.spark import get_spark

    cfg = build_conf(conf, warehouse, set_)
    path = report_path(warehouse_path(cfg), parse_date(date))
    # A report on HDFS or an object store is looked up through Spark's file systems (a session).
    spark = None if files.local_path(path) is not None else get_spark(cfg, app_name="report")
    if not files.exists(path, spark):
        fail(f"no report for {date} at {path}: run `botwatch run --date {date}` (its monitor step writes it)", code=1)
    typer.echo(path)


def main(argv: list[str] | None = None) -> None:
    # typer names the option after the parameter; `set_` must still read --set.
    app(args=argv if argv is not None else sys.argv[1:], prog_name="botwatch")


if __name__ == "__main__":
    main()
