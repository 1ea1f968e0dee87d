"""Package botwatch: nightly bot-detection scoring on Apache Spark.

Pins are exact where pip would otherwise backtrack through huge source archives
(pyspark ships as a ~450 MB sdist) or where two packages share a folder
(pyspark-client writes into pyspark/, so it must match pyspark exactly).
"""
from setuptools import find_packages, setup

SPARK_VERSION = "4.2.0"

install_requires = [
    f"pyspark=={SPARK_VERSION}",
    f"pyspark-client=={SPARK_VERSION}",
    # The Delta jar for Spark 4.2 on Maven Central is 4.4.0; keep the Python side equal.
    "delta-spark==4.4.0",
    "graphframes-py==0.12.3",
    "xgboost==3.2.0",
    "torch==2.15.0",
    "apache-airflow==3.3.2",
    "apache-airflow-providers-apache-spark==6.3.4",
    "deltalake==1.6.6",
    "duckdb==2.0.0",
    "polars==2.1.0",
    # pyspark 4.2's testing helpers break on pandas 3.
    "pandas>=2.2,<3",
    "pyarrow>=15",
    "numpy>=2.0",  # np.trapezoid (botwatch.evaluation.metrics); numpy 1.x has only trapz
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "pyyaml>=6",
    "typer>=0.12",
    "rich>=13",  # the backfill progress bar (botwatch.nightly)
    "matplotlib>=3.8",
]

extras_require = {
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "chispa==0.12.0",
        "networkx>=3.2",
        "papermill>=2.6",
        "ipykernel>=6",
        "nbclient>=0.10",
        "ruff>=0.5",
        "mypy>=1.10",
        "types-PyYAML",
    ],
}

setup(
    name="botwatch",
    version="0.1.0",
    description="Nightly distributed bot-detection scoring on Spark, Delta, XGBoost and torch",
    python_requires=">=3.11,<3.12",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    include_package_data=True,
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={"console_scripts": ["botwatch=botwatch.cli:main"]},
)
