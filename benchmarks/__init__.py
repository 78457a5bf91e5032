"""Benchmarks of buildbot_farm against the tools it replaces; `make bench` runs them."""
