"""Backends: one seam (base.Backend), several implementations, built from a role spec."""
