"""petseg's library code, grouped by concern: imported by the commands in src/ (train.py,
evaluate.py, inference.py, ...), never run itself."""
