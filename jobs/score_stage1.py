"""spark-submit entry point: Stage-1 (XGBoost) scores for every account of --date into the scores table."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("score_stage1", __doc__)
