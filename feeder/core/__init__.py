"""The pure heart of the feeder: task records, the lease state machine, policies, tokens.

Nothing in this package does I/O or reads the clock: `now` (seconds since the epoch, float)
and randomness (`random.Random`) are passed in by the caller.
"""
