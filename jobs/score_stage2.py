"""spark-submit entry point: Stage-2 (heavy torch model) scores for the accounts stage 1 flagged on --date."""
from botwatch.entry import run_date_step

if __name__ == "__main__":
    run_date_step("score_stage2", __doc__)
