"""budgets stage."""
