"""Tests of reports: spend reports and a generated month end to end."""
