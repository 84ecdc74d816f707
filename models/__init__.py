"""Pure TensorFlow + TFP: the AEVB model, its objectives, estimators and training loop.

Nothing here imports prefect, mlflow, pandas or pyarrow, reads files other than checkpoints and
SavedModels, or prints. Dependency rule: flows -> tasks -> models.
"""
