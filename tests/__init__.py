"""Tests of buildbot_farm: a package per capability, the real services they need in
tests.harness."""
