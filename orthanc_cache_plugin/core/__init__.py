"""The vocabulary every layer shares: data types, the cached routes (as data),
cache keys, settings and counters.  Plain Python, no I/O; imports nothing above it."""
