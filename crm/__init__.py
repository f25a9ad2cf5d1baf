"""Kizuna's domain, without I/O: profiles, segments, sequences, schedule math, analytics.

Nothing in this package imports Flask, Redis or an HTTP client; every function works on
plain data and takes the time it needs as an argument.
"""
