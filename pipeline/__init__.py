"""Which optimizer, learning-rate schedule and batch size train your model fastest.

python -m pipeline            # search, then report (conf/config.yaml + your overrides)
"""

__version__ = "0.1.0"
