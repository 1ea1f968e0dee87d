"""spark-submit entry point: Publish --date's scores to scores_latest."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("publish", __doc__)
