"""What several agents share: policy loading and log-probs, KV-cache rollouts, precision,
logging, checkpoints."""
