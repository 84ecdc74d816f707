"""The registered model is self-contained: a pyfunc from code around the SavedModel, no pickle,
and a process without this project on its path gets the same numbers as the in-project encoder."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks import register as R
from tasks import tracking
from tests.tasks._mlflow_helpers import save_untrained_model, write_dataset

REPO = Path(__file__).resolve().parents[2]
CONSUMER = Path(__file__).with_name("_standalone_consumer.py")
SHAPE = (4, 4)
LATENT = 3


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """`aevb-std@champion` in a module-wide temp store: an (untrained) model with 3 latents."""
    tmp = tmp_path_factory.mktemp("pyfunc")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "data")
    version = write_dataset(root, "std", feature_shape=SHAPE)
    saved = save_untrained_model(str(tmp / "model"), SHAPE, LATENT, seed=7)
    run_id = tracking.start_run("aevb-std", "standalone")
    tracking.end_run(run_id)
    out = R.register(run_id, saved, "std", version, -12.5, data_root=root, eval_num_samples=8)
    x = (np.random.default_rng(3).random((25, 16)) < 0.4).astype(np.float32)
    yield {"tmp": tmp, "saved": saved, "out": out, "x": x, "uri": tracking.tracking_uri()}
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


def _expected(saved: str, x: np.ndarray) -> dict[str, np.ndarray]:
    from models.saved import load_vae

    vae = load_vae(saved)
    z_mean, z_std = (t.numpy() for t in vae.posterior_params(x))
    return {"z_mean": z_mean, "z_std": z_std, "reconstruction": vae.decode_mean(z_mean).numpy()}


def test_logged_model_has_no_pickle_a_signature_an_example_and_pinned_requirements(
    champion, tmp_path
):
    import mlflow
    import yaml

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri="models:/aevb-std@champion", dst_path=str(tmp_path / "m")
        )
    )
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle")]
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code
    assert "python_model" not in flavor  # the key that would name a cloudpickled python_model.pkl
    assert "pkl" not in (local / "MLmodel").read_text()
    assert flavor["artifacts"]["saved_model"]["path"] == "artifacts/saved_model"
    assert (local / "artifacts" / "saved_model" / "saved_model.pb").is_file()
    # No input schema (MLflow's would refuse float64 or drop extra columns): the model checks
    assert mlmodel["signature"]["inputs"] is None  # inputs itself, described in the metadata
    outputs = {o["name"]: o for o in json.loads(mlmodel["signature"]["outputs"])}
    assert list(outputs) == ["z_mean", "z_std", "reconstruction"]  # one per params["output"]
    assert {n: o["tensor-spec"]["shape"] for n, o in outputs.items()} == {
        "z_mean": [-1, LATENT],
        "z_std": [-1, LATENT],
        "reconstruction": [-1, 16],
    }
    [param] = json.loads(mlmodel["signature"]["params"])
    assert (param["name"], param["default"]) == ("output", "z_mean")
    example = json.loads((local / "input_example.json").read_text())
    assert np.asarray(example).shape == (5, 16)
    assert (local / "requirements.txt").read_text().split() == tracking.pip_requirements()
    assert {r.split("==")[0] for r in tracking.pip_requirements()} == {
        "mlflow",
        "tensorflow",
        "numpy",
    }


def test_metadata_says_the_input_scale_shape_and_range_and_each_output(champion):
    import mlflow

    info = mlflow.models.get_model_info("models:/aevb-std@champion")
    meta = info.metadata["aevb"]
    assert meta["input"]["feature_shape"] == list(SHAPE) and meta["input"]["dim"] == 16
    assert meta["input"]["accepted_range"] == [0.0, 1.0]  # Bernoulli decoder: its support
    assert meta["input"]["likelihood"] == "bernoulli"
    assert meta["outputs"]["reconstruction"]["shape"] == [-1, 16]
    assert meta["outputs"]["z_std"]["shape"] == [-1, LATENT]


def test_model_code_imports_nothing_from_this_project(champion, tmp_path):
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri="models:/aevb-std@champion", dst_path=str(tmp_path / "m")
        )
    )
    code = (local / "pyfunc_model.py").read_text()  # the copy MLflow loads
    assert code == tracking.PYFUNC_CODE.read_text()
    roots = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "typing", "mlflow", "numpy", "tensorflow"}, roots
    # ... and requirements.txt names exactly the third-party ones
    assert roots - {"__future__", "typing"} == {
        r.split("==")[0] for r in tracking.pip_requirements()
    }


def test_in_process_predictions_equal_the_encoder_and_decoder(champion):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/aevb-std@champion")
    x = champion["x"]
    want = _expected(champion["saved"], x)
    np.testing.assert_allclose(model.predict(x), want["z_mean"], rtol=1e-6, atol=1e-6)
    for output, expected in want.items():
        got = model.predict(x, params={"output": output})
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=output)
    with pytest.raises(Exception, match="choose one of z_mean, z_std, reconstruction"):
        model.predict(x, params={"output": "logits"})


def test_float64_ints_lists_and_dataframes_are_accepted_and_cast(champion):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/aevb-std@champion")
    x = champion["x"]
    want = _expected(champion["saved"], x)
    for given in (
        x.astype(np.float64),
        x.astype(np.int64),
        x.astype(np.uint8),
        x.tolist(),
        pd.DataFrame(x),
        pd.DataFrame(x.astype(np.float64), columns=[f"p{i}" for i in range(16)]),
    ):
        for output in ("z_mean", "reconstruction"):
            got = model.predict(given, params={"output": output})
            assert got.dtype == np.float32 and got.shape == want[output].shape
            np.testing.assert_allclose(got, want[output], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            lambda x: x * 255,
            r"inputs span \[0, 255\], outside the accepted model-space range \[0, 1\]",
        ),
        (lambda x: x - 0.5, r"inputs span \[-0.5, 0.5\], outside"),
        (lambda x: np.where(x > 0, np.nan, x), "NaN or infinity"),
        (lambda x: x[:, :15], "each row must hold 16 values .*; got 15"),
        (lambda x: np.hstack([x, x[:, :1]]), "each row must hold 16 values .*; got 17"),
        (lambda x: [["a"] * 16], "inputs must be numbers"),
    ],
)
def test_inputs_out_of_range_or_of_the_wrong_shape_are_refused_with_a_clear_message(
    champion, bad, message
):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/aevb-std@champion")
    with pytest.raises(Exception, match=message):
        model.predict(bad(champion["x"]))


@pytest.mark.slow
def test_a_process_without_this_project_gets_the_same_predictions(champion, tmp_path):
    work = tmp_path / "consumer"
    work.mkdir()
    script = work / "consumer.py"
    shutil.copy(CONSUMER, script)
    np.save(work / "x.npy", champion["x"])
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AEVB_"))
    }  # nothing that points at the project
    env["MLFLOW_TRACKING_URI"] = champion["uri"]
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            str(REPO),
            "models:/aevb-std@champion",
            str(work / "x.npy"),
            str(work / "out.npz"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["project_modules_loaded"] == []
    assert str(REPO) not in report["sys_path"] and "" not in report["sys_path"]
    assert "choose one of" in report["bad_output_error"]
    got = np.load(work / "out.npz")
    want = _expected(champion["saved"], champion["x"])
    np.testing.assert_allclose(got["default"], want["z_mean"], rtol=1e-6, atol=1e-6)
    for output, expected in want.items():
        np.testing.assert_allclose(got[output], expected, rtol=1e-6, atol=1e-6, err_msg=output)
