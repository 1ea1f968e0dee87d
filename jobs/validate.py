"""spark-submit entry point: Check the input tables for --date before the run reads them."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("validate", __doc__)
