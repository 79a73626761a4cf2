"""A compression boundary and the meter of what crosses it."""
