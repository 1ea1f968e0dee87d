"""The canary: standardised, L2-regularised logistic regression (Spark ML) on a handful of plain
features — the deck's baseline. Trained every time; a challenger must beat it to be promoted."""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from botwatch import tables as t

CANARY_VECTOR = "_canary_x"
CANARY_SCALED = "_canary_z"


def canary_inputs(df: DataFrame, cols: Sequence[str]) -> DataFrame:
    # A plain baseline: missing values (null, NaN: Spark ML's assembler refuses it, and +-inf: the scaler
    # would learn an infinite mean, as stage 1 and the heavy model take it) become 0 beside an explicit
    # missing indicator. NaN is above every number in Spark, so the bound drops it too.
    out = df
    for c in cols:
        x = F.col(c).cast("double")
        value = F.when(F.abs(x) < F.lit(float("inf")), x)
        out = out.withColumn(f"_canary_{c}", F.coalesce(value, F.lit(0.0)))
        out = out.withColumn(f"_canary_{c}_missing", value.isNull().cast("double"))
    return out


def _input_names(cols: Sequence[str]) -> list[str]:
    return [n for c in cols for n in (f"_canary_{c}", f"_canary_{c}_missing")]


def fit_canary(
    train: DataFrame, cols: Sequence[str], reg_param: float = 0.01, weight_col: str = t.WEIGHT
) -> PipelineModel:
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=_input_names(cols), outputCol=CANARY_VECTOR),
            StandardScaler(inputCol=CANARY_VECTOR, outputCol=CANARY_SCALED, withMean=True, withStd=True),
            LogisticRegression(
                featuresCol=CANARY_SCALED, labelCol=t.LABEL, weightCol=weight_col,
                regParam=reg_param, elasticNetParam=0.0, maxIter=100,
            ),
        ]
    )
    data = canary_inputs(train, cols).withColumn(t.LABEL, F.col(t.LABEL).cast("double"))
    return pipeline.fit(data)


def canary_scores(model: PipelineModel, df: DataFrame, cols: Sequence[str], out_col: str = "canary_score") -> DataFrame:
    scored = model.transform(canary_inputs(df, cols))
    return scored.withColumn(out_col, vector_to_array(F.col("probability"))[1]).drop(
        CANARY_VECTOR, CANARY_SCALED, "rawPrediction", "probability", "prediction", *_input_names(cols)
    )
