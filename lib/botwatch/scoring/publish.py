"""Score run date D and write the ``scores`` partition D (replaced whole: reruns never duplicate)."""
from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from botwatch import tables as t
from botwatch.delta_io import commit_metadata, write_table
from botwatch.scoring.decisions import with_decisions
from botwatch.scoring.stage1 import features_for, load_champion, score_stage1

SCORE_COLUMNS = (
    t.ACCOUNT_ID, t.RUN_DATE, t.STAGE1_SCORE, t.STAGE2_SCORE, t.SCORE, t.DECISION, t.MODEL_VERSION,
    "stage2_reached", "reason_codes", "actioned", "holdout", "golden",
)


def score_and_write(spark: SparkSession, warehouse: str, run_date: dt.date, params: dict) -> dict:
    model = load_champion(spark, warehouse)
    scored = score_stage1(features_for(spark, warehouse, run_date), model, params.get("reason_codes", 3))
    scored = (
        scored.withColumn(t.STAGE2_SCORE, F.lit(None).cast("double"))
        .withColumn("stage2_reached", F.lit(False))
        .withColumn(t.SCORE, F.col(t.STAGE1_SCORE))
        .withColumn(t.MODEL_VERSION, F.lit(f"stage1_xgb:{model.version}"))
    )
    scored = with_decisions(
        scored, run_date, threshold=model.threshold, review_band=params["review_band"], mode=params["mode"],
        exploration_share=params["exploration_share"], golden_share=params["golden_share"],
        golden_salt=params["golden_salt"],
    ).select(*SCORE_COLUMNS)
    scored = scored.cache()
    counts = {r[t.DECISION]: r["n"] for r in scored.groupBy(t.DECISION).agg(F.count("*").alias("n")).collect()}
    with commit_metadata(spark, step="score", run_date=run_date.isoformat()):
        write_table(
            scored, warehouse, t.SCORES, partition_by=[t.RUN_DATE],
            replace_where=f"{t.RUN_DATE} = '{run_date.isoformat()}'",
        )
    scored.unpersist()
    return {"model_version": model.version, "threshold": model.threshold, **{f"n_{k}": v for k, v in counts.items()}}
