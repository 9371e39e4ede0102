"""Persistence: run directory layout, atomic part commits, seals, lock, manifest, verify."""
