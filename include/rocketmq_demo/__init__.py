"""A demo fleet for tests and `make demo`: producers and consumers on the C++ and the official
Java client that take their cluster from a name-server address service (or, in tests, a small
HTTP config service) and record every message they send and receive."""
