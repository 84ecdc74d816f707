"""The per-model retrain lock (flows/pipeline.py `model_lock`): a Prefect global concurrency limit
`aevb-train-<model>` with one slot. A second retrain of the same model waits; after
`pipeline.lock_timeout_seconds` it fails with a one-line PipelineError."""

from __future__ import annotations

import threading
import time

import pytest

from models.errors import PipelineError
from tests.helpers import env


def test_second_holder_fails_clearly_after_the_timeout(prefect_harness):
    from flows.pipeline import model_lock

    with model_lock("aevb-busy", 60):
        start = time.monotonic()
        with pytest.raises(PipelineError) as info:
            with model_lock("aevb-busy", 1):
                pytest.fail("acquired a lock that is held")
        waited = time.monotonic() - start
    msg = str(info.value)
    assert "another retrain of model 'aevb-busy'" in msg and "'aevb-train-aevb-busy'" in msg
    assert "gave up after waiting 1 s" in msg and "\n" not in msg
    assert waited >= 0.9
    with model_lock("aevb-busy", 5) as wait_seconds:  # released: free again at once
        assert wait_seconds < 5


def test_locks_of_different_models_are_independent(prefect_harness):
    from flows.pipeline import model_lock

    with model_lock("aevb-a", 30):
        with model_lock("aevb-b", 5) as waited:
            assert waited < 5


def test_an_error_inside_the_lock_is_not_mistaken_for_a_lock_timeout(prefect_harness):
    from flows.pipeline import model_lock

    with pytest.raises(TimeoutError, match="tracking server"):
        with model_lock("aevb-c", 30):
            raise TimeoutError("tracking server timed out")
    with model_lock("aevb-c", 5):  # and the slot was released
        pass


@pytest.mark.slow
def test_two_concurrent_retrains_of_one_model_never_overlap(prefect_harness, tmp_path):
    from flows.config import load_config
    from flows.pipeline import pipeline_flow
    from tasks import tracking
    from tasks.ingest import ingest

    root = str(tmp_path / "data")
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp_path / "mlflow")):
        ingest("digits", "digits", root)  # both runs then find the data unchanged
        base = [
            "train.epochs=1", "train.jit_compile=false", "model.hidden_sizes=[16]",
            "model.latent_dim=2", "evaluate.num_samples=8", "export.splits=['test']",
            f"data.data_root={root!r}",
        ]  # fmt: skip
        results: dict[int, object] = {}
        errors: list[BaseException] = []

        def run(seed: int) -> None:
            try:  # different seeds: two genuine trainings of the same registered model
                results[seed] = pipeline_flow(load_config(overrides=[*base, f"train.seed={seed}"]))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        assert not errors, errors
        first, second = sorted(results.values(), key=lambda s: s.lock_acquired_at)
        # The second retrain asked for the lock before the first released it (they really
        # contended; both threads start at once, so it may even have asked a moment before the
        # first got the slot: acquiring is not first-come-first-served), and got it only after
        # the first released it: the two retrains never overlapped.
        second_requested_at = second.lock_acquired_at - second.lock_wait_seconds
        assert second_requested_at < first.lock_released_at
        assert second.lock_acquired_at >= first.lock_released_at
        assert {first.model_version, second.model_version} == {1, 2}
        assert not first.skipped and not second.skipped
        assert [v.version for v in tracking.list_versions("aevb-digits")] == [1, 2]
