"""`python -m edgesplit.report DIR...`: seed-style tables and curves of run dirs."""
