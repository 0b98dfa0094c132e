"""Tests of budgets: alerts, webhook delivery and hard budgets."""
