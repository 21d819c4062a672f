"""Optimisation helpers (torch twins of paddle_impl.optim)."""
