"""The deep-learning toolbox: data, augmentation, normalization, dropout, models, SGD, training.

Knows nothing of FastAPI, Ray or MLflow; `workers/` builds on it.
"""
