"""Monitoring and the human loop: drift against the champion's training reference, the
investigators' review queue, prevalence estimates from its labels, and the run report.

:func:`botwatch.monitoring.run.monitor` does all of it for one run date (the ``monitor`` step).
"""
