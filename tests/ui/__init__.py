"""Tests of the Farm pages in Buildbot's web UI: the dashboard resource, its page data, a real
browser."""
