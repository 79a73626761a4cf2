"""The split planner: `python -m edgesplit.plan` predicts step time, bytes and memory of every split."""
