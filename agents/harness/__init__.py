"""The training harness every agent runs on: configs (``config``), the one training loop
(``run``: run directory, log points, callbacks, schedules, atomic checkpoints, resume),
processes (``distributed``), logging and checkpoints."""
