"""Tests of exports: FOCUS, billing catch-up and event import."""
