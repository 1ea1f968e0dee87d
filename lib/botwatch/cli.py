"""The ``botwatch`` command line (also ``python -m botwatch``).

Every command takes ``--conf`` (default ``conf/local.yaml``), ``--warehouse`` and repeated
``--set key=value``. Configuration problems exit with code 2 and a message naming the key.
Commands only parse, load conf, build the session and call one library function.
"""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from botwatch.config import DEFAULT_CONF, Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="botwatch: nightly bot-detection scoring on Spark.")

ConfOpt = Annotated[str, typer.Option("--conf", help="environment conf file overlaid on conf/base.yaml")]
WarehouseOpt = Annotated[Optional[str], typer.Option("--warehouse", help="root of the Delta tables")]


@app.callback()
def _root() -> None:
    """botwatch: nightly bot-detection scoring on Spark."""


SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a knob: key=value (repeatable)")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"botwatch: {message}", err=True)
    raise typer.Exit(code)


def build_conf(conf: str, warehouse: str | None, overrides: list[str] | None) -> Config:
    sets = list(overrides or [])
    if warehouse:
        sets.append(f"warehouse={warehouse}")
    try:
        return load_config(conf, sets)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


@app.command()
def doctor(conf: ConfOpt = DEFAULT_CONF, warehouse: WarehouseOpt = None, set_: SetOpt = None) -> None:
    """Report versions and check a real Delta write/read and a GraphFrames call."""
    from botwatch.doctor import run_doctor

    ok = run_doctor(build_conf(conf, warehouse, set_), echo=typer.echo)
    raise typer.Exit(0 if ok else 1)


def main(argv: list[str] | None = None) -> None:
    # typer names the option after the parameter; `set_` must still read --set.
    app(args=argv if argv is not None else sys.argv[1:], prog_name="botwatch")


if __name__ == "__main__":
    main()
