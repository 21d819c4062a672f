"""Optimisation helpers (Paddle twins of torch_ref.optim)."""
