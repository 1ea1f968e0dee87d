"""Stage 1: the champion XGBoost model scores every account of ``features`` for run date D."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from botwatch import registry
from botwatch import tables as t
from botwatch.delta_io import read_table
from botwatch.models.stage1 import PlattCalibration, score_frame
from botwatch.training import STAGE1_MODEL


@dataclass
class LoadedStage1:
    version: int
    raw: bytes
    features: list[str]
    calibration: PlattCalibration
    threshold: float | None


def load_champion(
    spark: SparkSession, warehouse: str, model_name: str = STAGE1_MODEL, as_of: dt.date | None = None
) -> LoadedStage1:
    """The champion (with ``as_of``: the one of that date, see :func:`botwatch.registry.champion`)."""
    champ = registry.champion(spark, warehouse, model_name, as_of=as_of)
    if champ is None:
        when = f" as of {as_of}" if as_of else ""
        newer = registry.newer_champion(registry.champion(spark, warehouse, model_name), as_of) if as_of else None
        if newer is not None:
            raise registry.NoChampionError(
                f"no champion '{model_name}'{when} in {warehouse}/model_registry: the first ({newer}) was trained "
                "after it, on labels observed later, so this date is not scored (training it again cannot help: "
                "the gate never replaces a champion with a model trained on an earlier date)"
            )
        raise registry.NoChampionError(
            f"no champion '{model_name}'{when} in {warehouse}/model_registry: train one first with "
            "`botwatch train --date D` (it needs labels and features from earlier days)"
        )
    art = champ["artifact_path"]
    cal = registry.read_artifact(art, "calibration.json")
    return LoadedStage1(
        version=champ[t.VERSION],
        raw=registry.read_artifact(art, "model.json", binary=True),
        features=registry.read_artifact(art, "features.json")["features"],
        calibration=PlattCalibration(cal["a"], cal["b"]),
        threshold=champ["threshold"],
    )


def features_for(spark: SparkSession, warehouse: str, run_date: dt.date) -> DataFrame:
    return read_table(spark, warehouse, t.FEATURES).where(F.col(t.RUN_DATE) == F.lit(run_date))


def score_stage1(features: DataFrame, model: LoadedStage1, reason_codes: int = 3) -> DataFrame:
    """``features`` plus ``stage1_score`` (calibrated) and ``reason_codes``; a feature the model
    knows but the partition lacks is fed as missing."""
    for c in model.features:
        if c not in features.columns:
            features = features.withColumn(c, F.lit(None).cast("double"))
    return score_frame(features, model.raw, model.features, model.calibration, reason_codes=reason_codes)
