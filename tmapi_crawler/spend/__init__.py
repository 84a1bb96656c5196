"""Spend reporting: what a plan will probably cost (the estimate)."""
