"""spark-submit entry point: Drift, review queue, prevalence and the run report for --date."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("monitor", __doc__)
