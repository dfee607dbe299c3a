"""Developer tools (not installed as executables)."""
