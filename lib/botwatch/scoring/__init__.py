"""Scoring: stage 1 (the champion XGBoost) on every account of the run's features partition,
decisions, and the ``scores`` partition for run date D."""
