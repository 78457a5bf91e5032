"""Tests of on-demand builds: parameters and build keys, the job table, OnDemandHost, signing, real
masters."""
