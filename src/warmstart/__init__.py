"""warmstart: two-stage post-training of vision-language models and what Stage-1 controls."""

__version__ = "0.1.0"
