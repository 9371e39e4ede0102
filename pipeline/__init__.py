"""The driver: config, run plan, scheduler on Ray, exports, status and the CLI."""
