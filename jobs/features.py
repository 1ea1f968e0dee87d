"""spark-submit entry point: Build activity_daily (as needed) and the features partition for --date."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("features", __doc__)
