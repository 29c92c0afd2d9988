"""Model plumbing: loading policies and their tokenizers, stop ids, logits over the tokenizer's
vocabulary, the critic, LoRA adapters and the reference as disabled adapters, gradient
checkpointing, precision and device."""
