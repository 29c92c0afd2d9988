"""Does length grow under GRPO-family RL when reasoning pays? The study (``study``) and its
report (``report``)."""
