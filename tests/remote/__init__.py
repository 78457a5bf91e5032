"""Tests for the buildlet agent."""
