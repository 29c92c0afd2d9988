"""The report toolkit: runs read back (``runs``), tables, plots, failures, the reward–KL frontier
and the writer of ``report.md``/``results.json``. Imports point one way:
writer → frontier → plots → failures → tables; runs stands alone."""
