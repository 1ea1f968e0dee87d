"""spark-submit entry point: Build the activity_daily partition (daily partials) for --date."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("activity", __doc__)
