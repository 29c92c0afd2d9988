"""Agents: SFT, DPO (offline) and PPO, REINFORCE (online, through TokenMDP-v0)."""
