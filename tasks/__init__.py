"""Pipeline stages as Prefect tasks over plain functions, over one store floor (tasks/store/).

Stage modules (ingest, train, evaluate, register, export, corrupt, restore) are peers that never
import each other; what they share lives in tasks/store/ or in a shared module (scoring, tracking
- the only mlflow importer -, runners, plots, logs, sources/). Tasks hand each other paths, URIs,
ids and frozen configs. See docs/design.md.
"""
