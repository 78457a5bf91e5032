"""Tests of ContainerTask: its config checks, its pure tar and outputs logic, and real builds on
Docker."""
