"""Stage logic (one module per stage kind), the engines stages hold, and the worker that
runs a stage over committed micro-batches."""
