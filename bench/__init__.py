"""Benchmarks: each prints its figures next to a baseline measured in the same run.

Run ``make bench`` (all) or ``make bench FILTER=<name>`` (one figure's benchmark).
"""
