"""Tests of the coordinator, its providers, clients and the latent worker."""
