"""Do process rewards help PPO? The study (``study``) and its report (``report``)."""
