"""Tests of build records: the store and its immutability, the records API, BuildRecorder in real
masters."""
