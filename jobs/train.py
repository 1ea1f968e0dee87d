"""spark-submit entry point: Train or refresh the stage-1 model for --date (promotion gate included)."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("train", __doc__)
