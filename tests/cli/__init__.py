"""Tests of the command line, the scheduler and the Ledger API."""
