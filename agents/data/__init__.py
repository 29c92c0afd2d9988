"""Data: offline batches of TRL-format rows (``offline``) and the producers of training data
through the env: preference pairs (``preferences``) and stepwise labels (``process_labels``)."""
