"""The KL-estimator study: the toy and both parts (``study``), the exact gradient maths
(``gradients``), the table and plot (``report``)."""
