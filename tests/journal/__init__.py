"""Tests of the journal: the spool encoding of events and the writer process."""
