"""petseg's library code, grouped by concern: imported by the commands in src/ (train.py,
evaluate.py, inference.py, ...), never run itself."""

import os

# albumentations asks PyPI for a newer version when it is imported: a network call from every command
# and test (and a wait where there is no network). The project pins its version; nothing to ask.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
