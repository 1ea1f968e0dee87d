"""spark-submit entry point: Score every account for --date with the champion into the scores table."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("score", __doc__)
