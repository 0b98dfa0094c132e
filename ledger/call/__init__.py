"""call stage."""
