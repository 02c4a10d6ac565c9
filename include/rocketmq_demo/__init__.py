"""A demo fleet for tests and `make demo`: producers and consumers that take their cluster from
a small HTTP config service and record every message they send and receive."""
