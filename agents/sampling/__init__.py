"""Sampling and the online kit: the KV-cached rollout through the vector env, branching from any
token state, and what the online agents share (reference, KL, rollout metrics)."""
