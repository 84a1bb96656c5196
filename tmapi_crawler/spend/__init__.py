"""Spend control: the budget of paid calls, the resume ledger, the estimate, what a crawl cost."""
