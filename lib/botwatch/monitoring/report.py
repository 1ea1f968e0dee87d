"""The run report: one self-contained HTML file per run (figures embedded as base64 PNG), at
``<warehouse>/reports/<D>.html``.

Plots: the PR curve of past decisions' labels with the operating point, the score histogram
against the previous week's, a drift heat map (features x days, PSI), the cascade funnel, false
positive rates per segment and the prevalence estimate over time. A plot whose inputs are
missing (first day, no labels yet) is replaced by a sentence saying so; a plot that fails for
any other reason says that too: the report never stops the run.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from botwatch import files
from botwatch import tables as t
from botwatch.delta_io import read_table, table_exists
from botwatch.evaluation.metrics import fpr_by_segment, pr_curve

PLOTS = ("pr_curve", "score_histogram", "drift_heatmap", "funnel", "fpr_segments", "prevalence")


class MissingInput(Exception):
    """A plot's inputs are not there yet; the message is shown in its place."""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def plot_pr_curve(pairs: pd.DataFrame, metrics: dict) -> str:
    """The PR curve of past scores, and the operating point where their ``action`` decisions put it
    (``past_recall`` / ``past_precision`` of ``metrics``; and ``sampled_*``, the stratified review sample's
    population estimate, when there is one). The decisions, not one threshold on the scores: stage 2
    decided its flagged accounts at its own threshold, and past champions at theirs."""
    if len(pairs) == 0 or pairs["label"].nunique() < 2:
        raise MissingInput("No labels with both classes have arrived for past decisions yet: no PR curve.")
    y = pairs["label"].astype(int).to_numpy()
    s = pairs["score"].astype(float).to_numpy()
    precision, recall, _ = pr_curve(y, s)
    fig, ax = _figure()
    ax.step(recall, precision, where="post", label=f"past decisions ({len(y)} labels)")
    r, p = metrics.get("past_recall", math.nan), metrics.get("past_precision", math.nan)
    if not (math.isnan(r) or math.isnan(p)):
        # Labels arrive mostly for actioned accounts (appeals) and queue picks: a biased sample.
        ax.plot([r], [p], "o", color="crimson", label=f"past actions, labels arrived: precision {p:.3f}")
    r, p = metrics.get("sampled_recall", math.nan), metrics.get("sampled_precision", math.nan)
    if not (math.isnan(r) or math.isnan(p)):
        ax.plot([r], [p], "D", color="navy",
                label=f"past actions, review sample weighted to all accounts: precision {p:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall")
    ax.legend(loc="lower left")
    return _png(fig)


def plot_score_histogram(hist: pd.DataFrame, bins: int = 50) -> str:
    fig, ax = _figure()
    edges = np.linspace(0, 1, bins + 1)
    for current, label in ((False, "previous week"), (True, "today")):
        part = hist[hist["current"] == current] if len(hist) else hist
        if not len(part):
            if current:
                raise MissingInput("No scores for today.")
            continue
        counts = np.zeros(bins)
        counts[part["bin"].to_numpy(dtype=int)] = part["count"].to_numpy(dtype=float)
        ax.stairs(counts / counts.sum(), edges, label=label)
    if not len(hist[~hist["current"]]):
        ax.set_title("Score distribution (no previous week to compare: first day)")
    else:
        ax.set_title("Score distribution")
    ax.set(xlabel="score", ylabel="share of accounts", yscale="log")
    ax.legend()
    return _png(fig)


def plot_drift_heatmap(spark: SparkSession, warehouse: str, run_date: dt.date, days: int, top: int) -> str:
    if not table_exists(spark, warehouse, t.DRIFT):
        raise MissingInput("No drift table yet.")
    rows: pd.DataFrame = (
        read_table(spark, warehouse, t.DRIFT)
        .where((F.col(t.NAME) == "psi") & F.col(t.RUN_DATE).between(F.lit(run_date - dt.timedelta(days=days - 1)),
                                                                      F.lit(run_date)))
        .select(t.RUN_DATE, "feature", t.VALUE)
        .toPandas()
    )
    if not len(rows):
        raise MissingInput("No feature drift measured yet (no reference profile for the model).")
    grid = rows.pivot_table(index="feature", columns=t.RUN_DATE, values=t.VALUE, aggfunc="max")
    grid = grid.loc[grid.max(axis=1).sort_values(ascending=False).index[:top]]
    fig, ax = _figure(7.5, max(2.5, 0.22 * len(grid) + 1.2))
    im = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="magma_r", vmin=0,
                   vmax=max(0.5, float(np.nanmax(grid.to_numpy(dtype=float)))))
    ax.set_yticks(range(len(grid)), grid.index, fontsize=7)
    ax.set_xticks(range(grid.shape[1]), [str(c)[5:] for c in grid.columns], rotation=90, fontsize=7)
    ax.set_title(f"PSI against the training reference (top {len(grid)} features)")
    fig.colorbar(im, ax=ax, label="PSI")
    return _png(fig)


def plot_funnel(funnel: dict) -> str:
    stages = [("accounts", "accounts"), ("flagged", "flagged"), ("stage 2", "stage2"), ("action", "action")]
    if not funnel.get("accounts"):
        raise MissingInput("No scored accounts.")
    fig, ax = _figure(6.4, 2.8)
    values = [funnel.get(k, 0) for _, k in stages]
    ax.barh([s for s, _ in stages][::-1], values[::-1], color="steelblue")
    for i, v in enumerate(values[::-1]):
        ax.text(max(v, 1), i, f" {v:,}", va="center")
    ax.set(xscale="log", xlabel="accounts (log)", title="Cascade funnel")
    return _png(fig)


def plot_fpr_segments(pairs: pd.DataFrame) -> str:
    if len(pairs) == 0 or (pairs["label"] == 0).sum() == 0:
        raise MissingInput("No human labels have arrived for past decisions yet: no false positive rates.")
    y = pairs["label"].astype(int).to_numpy()
    pred = (pairs["decision"] == "action").astype(int).to_numpy()
    names, rates = [], []
    for seg in ("is_new_account", "country"):
        values = pairs[seg].map(lambda v: "unknown" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
        if seg == "is_new_account":
            values = values.map({True: "new", False: "established"}).fillna("unknown")
        for key, rate in fpr_by_segment(y, pred, values.to_numpy()).items():
            if not math.isnan(rate):
                names.append(f"{seg}={key}")
                rates.append(rate)
    if not names:
        raise MissingInput("No segment has human labels yet.")
    fig, ax = _figure(6.4, max(2.5, 0.3 * len(names) + 1))
    ax.barh(names[::-1], rates[::-1], color="darkorange")
    ax.set(xlabel="false positive rate of 'action'", title="False positive rate per segment (labels arrived)")
    return _png(fig)


def plot_prevalence(spark: SparkSession, warehouse: str, run_date: dt.date) -> str:
    names = ("prevalence", "prevalence_low", "prevalence_high", "prevalence_queue_age_days")
    rows: pd.DataFrame = (
        read_table(spark, warehouse, t.METRICS)
        .where(F.col(t.NAME).isin(*names) & (F.col(t.RUN_DATE) <= F.lit(run_date)))
        .toPandas()
        if table_exists(spark, warehouse, t.METRICS) else pd.DataFrame()
    )
    if not len(rows) or rows[t.VALUE].notna().sum() == 0:
        raise MissingInput("No prevalence estimate yet: the review queue's stratified samples have no labels in "
                           "every stratum.")
    grid = rows.pivot_table(index=t.RUN_DATE, columns=t.NAME, values=t.VALUE).dropna(subset=["prevalence"])
    # An estimate is of the queue it came from, up to label_lookback_days old: plotted on that queue's
    # date, once, not again on every later night that reuses it.
    age = grid["prevalence_queue_age_days"].fillna(0) if "prevalence_queue_age_days" in grid else 0
    grid.index = pd.to_datetime(grid.index) - pd.to_timedelta(age, unit="D")
    grid = grid[~grid.index.duplicated(keep="last")].sort_index()
    fig, ax = _figure()
    x = grid.index
    ax.plot(x, grid["prevalence"], "o-", label="stratified estimate")
    if {"prevalence_low", "prevalence_high"} <= set(grid.columns):
        ax.fill_between(x, grid["prevalence_low"], grid["prevalence_high"], alpha=0.3, label="95 % interval")
    ax.set(ylabel="bot share of all accounts", title="Prevalence over time")
    ax.legend()
    fig.autofmt_xdate()
    return _png(fig)


TITLES = {
    "pr_curve": "PR curve of past decisions",
    "score_histogram": "Score histogram: today vs the previous week",
    "drift_heatmap": "Feature drift (PSI), features x days",
    "funnel": "Cascade funnel",
    "fpr_segments": "False positive rate per segment",
    "prevalence": "Prevalence estimate over time",
}


def _section(name: str, make: Callable[[], str]) -> str:
    title = html.escape(TITLES[name])
    try:
        img = make()
    except MissingInput as exc:
        return f'<section data-plot="{name}"><h2>{title}</h2><p class="missing">{html.escape(str(exc))}</p></section>'
    except Exception as exc:  # noqa: BLE001 - a broken plot must not stop the nightly run
        return (f'<section data-plot="{name}"><h2>{title}</h2><p class="missing">This plot failed: '
                f'{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p></section>')
    return (f'<section data-plot="{name}"><h2>{title}</h2>'
            f'<img alt="{title}" src="data:image/png;base64,{img}"></section>')


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render(run_date: dt.date, sections: list[str], metrics: dict, notes: list[str], alerts: dict) -> str:
    status = "HARD ALERT" if alerts.get("hard") else "drift alert (next run retrains)" if alerts.get("soft") else "ok"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(metrics.items()))
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    over = ", ".join(alerts.get("features_over_soft", [])) or "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>botwatch run report {run_date}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
section {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
.missing {{ color: #a60; font-style: italic; }} table {{ border-collapse: collapse; font-size: 0.85em; }}
td {{ border: 1px solid #ddd; padding: 2px 8px; }} .status {{ font-size: 1.3em; font-weight: bold; }}
</style></head><body>
<h1>botwatch run report: {run_date}</h1>
<p class="status">Status: {html.escape(status)}</p>
<p>Features over the soft PSI threshold: {html.escape(over)}</p>
<ul>{notes_html}</ul>
{''.join(sections)}
<h2>Metrics</h2><table>{rows}</table>
</body></html>
"""


def write_report(
    spark: SparkSession, warehouse: str, run_date: dt.date, path: str, *, params, pairs: pd.DataFrame,
    hist: pd.DataFrame, funnel: dict, metrics: dict, notes: list[str], alerts: dict,
) -> str:
    """Render every plot (or the reason it is missing) and write the HTML file; returns ``path``."""
    makers: dict[str, Callable[[], str]] = {
        "pr_curve": lambda: plot_pr_curve(pairs, metrics),
        "score_histogram": lambda: plot_score_histogram(hist),
        "drift_heatmap": lambda: plot_drift_heatmap(spark, warehouse, run_date, params.heatmap_days,
                                                    params.heatmap_features),
        "funnel": lambda: plot_funnel(funnel),
        "fpr_segments": lambda: plot_fpr_segments(pairs),
        "prevalence": lambda: plot_prevalence(spark, warehouse, run_date),
    }
    sections = [_section(name, makers[name]) for name in PLOTS]
    files.write_bytes(path, render(run_date, sections, metrics, notes, alerts).encode(), spark)
    return path
