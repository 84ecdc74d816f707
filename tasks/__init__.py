"""Pipeline stages as Prefect tasks over plain functions, plus Parquet I/O and the MLflow adapter.

One module per stage (ingest, train, evaluate, register, export, restore). `tasks.tracking` is the
only module that imports mlflow. Tasks hand each other paths, URIs, ids and frozen configs.
"""
