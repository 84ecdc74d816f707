"""The store floor under every stage: one filesystem layer, atomic publication, and the layouts and
codecs of what the stages write (datasets, latent tables, restored tables).

    fs         one filesystem layer for local paths and URIs (s3://, gs://, ... through fsspec)
    publish    atomic file write, atomic folder swap, crash recovery, sweep of staging leftovers
    roots      where the data root, checkpoints and the embedded MLflow store live by default
    datasets   dataset layout, manifest, CURRENT, names and versions
    readers    reading dataset splits (whole, or streamed in batches)
    writer     writing a new dataset version (content hash, part files, publish)
    streaming  tf.data input pipelines over a split
    tables     Arrow codecs: the x column, latent tables, restored tables, table manifests

Stage modules (tasks/ingest.py, export.py, ...) import from here and never from each other.
"""
