"""Detection: built-in and configured rules evaluated over the collected samples into
firing and resolved transitions (engine.py), with no database and no network.
"""
