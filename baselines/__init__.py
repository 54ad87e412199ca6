"""Baselines on the shared harness, one readable file each (CleanRL style)."""
