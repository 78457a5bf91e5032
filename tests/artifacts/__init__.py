"""Tests of the artifact repository: pure path and token logic, HTTP and WebDAV, S3 storage, real
builds."""
