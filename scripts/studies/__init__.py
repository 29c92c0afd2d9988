"""The studies' library code (no argv): the stage runner (``stages``), the agent factory
(``factory``), the over-optimisation maths, one sub-package per study (``pipeline``: RLHF vs
DPO; ``process``: process rewards; ``kl``: the KL estimators; ``length``: length and entropy under
the GRPO variants), the held-out evaluation of the RL runs (``heldout``) and the report toolkit
(``report``). ``scripts/<command>.py`` turn argv into a study's config and make one call."""
