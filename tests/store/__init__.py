"""Tests of the store: migrations, insert paths, rollups, verify and corrections."""
