"""Background loops: claim → act → commit, each supervised (see `base.py`)."""
