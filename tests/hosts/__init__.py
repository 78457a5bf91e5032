"""Tests of docker pools and ContainerTask over several Docker hosts, on test hosts in network
namespaces."""
