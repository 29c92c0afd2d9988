"""Pure maths of tensors (advantages and baselines, KL estimators and controllers, the policy
losses, text and length metrics), tested against hand-computed numbers; imports nothing above
``agents.checks``."""
