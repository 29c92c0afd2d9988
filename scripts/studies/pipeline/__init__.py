"""The RLHF-vs-DPO study: options, presets and sizes (``config``), the stages (``study``)."""
