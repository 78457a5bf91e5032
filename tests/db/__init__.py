"""Tests of the farm database on both backends."""
