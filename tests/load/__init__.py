"""Load generator for the capture path (`python -m tests.load`, `make load`); see docs/scaling.md."""
