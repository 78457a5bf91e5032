"""Real services for the integration tests: PostgreSQL clusters, a Docker engine, test images."""
