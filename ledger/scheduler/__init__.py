"""scheduler stage."""
