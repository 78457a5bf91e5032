"""Tests of the farm's config-time checks: cross-object mistakes, unknown keywords, shared value
checks."""
