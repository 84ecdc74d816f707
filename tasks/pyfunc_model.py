"""MLflow pyfunc model *from code* wrapping the aevb SavedModel (docs/design.md "MLflow").

MLflow copies this file into the logged model, so it must stand alone: it imports only numpy,
mlflow and tensorflow, never this project. Nothing is pickled.

    predict(x)                                      -> z_mean            [N, latent_dim]
    predict(x, params={"output": "z_std"})          -> z_std             [N, latent_dim]
    predict(x, params={"output": "reconstruction"}) -> E[x | z = z_mean]  [N, D]

``x``: N rows of D model-space values (stored value * input scale: the model's metadata
``aevb.input``), as a numpy array of any int or float dtype, a list of rows or a DataFrame
(anything with ``to_numpy()``); it is cast to float32. The signature has no input schema on
purpose (see tasks/tracking.py `model_signature`): these checks are the input contract. Rows of another width, NaN/inf, and values outside the accepted range (e.g.
0-255 pixels for a model trained on [0, 1]) are refused with a message that says what to pass.
The settings come from the logged model's ``model_config`` (written by tasks/tracking.py).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

OUTPUTS = ("z_mean", "z_std", "reconstruction")


def _refuse(message: str) -> MlflowException:
    """A bad request: MLflow's scoring server answers it with HTTP 400 and this message."""
    return MlflowException.invalid_parameter_value(f"aevb model: {message}")


class AEVBPyfuncModel(PythonModel):
    def load_context(self, context) -> None:
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(context.artifacts["saved_model"])
        self._encode = self._model.signatures["encode"]
        self._decode = self._model.signatures["decode"]
        spec = dict((context.model_config or {}).get("input") or {})
        self._dim = int(spec.get("dim") or self._encode.structured_input_signature[1]["x"].shape[1])
        self._accepted = spec.get("accepted_range")
        self._scale = spec.get("scale")

    def _as_inputs(self, model_input: Any) -> np.ndarray:
        data = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        try:
            x = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise _refuse(f"inputs must be numbers ({exc})") from exc
        if x.ndim == 1:
            x = x[None, :]
        x = x.reshape(len(x), -1)
        if x.shape[1] != self._dim:
            raise _refuse(
                f"each row must hold {self._dim} values (the model's feature shape flattened); "
                f"got {x.shape[1]}"
            )
        if not np.isfinite(x).all():
            raise _refuse("inputs contain NaN or infinity")
        if self._accepted and x.size:
            lo, hi = self._accepted
            if x.min() < lo or x.max() > hi:
                how = (
                    f"multiply stored values by the input scale {self._scale:g} "
                    if self._scale
                    else "rescale them "
                )
                raise _refuse(
                    f"inputs span [{x.min():g}, {x.max():g}], outside the accepted model-space "
                    f"range [{lo:g}, {hi:g}]: {how}(metadata aevb.input.scale; "
                    "e.g. 0-255 pixels x 1/255)"
                )
        return x.astype(np.float32)

    def predict(
        self, context, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        output = (params or {}).get("output", "z_mean")
        if output not in OUTPUTS:
            raise _refuse(f"params['output']={output!r}; choose one of {', '.join(OUTPUTS)}")
        x = self._as_inputs(model_input)
        encoded = self._encode(x=self._tf.constant(x))
        if output == "reconstruction":
            return self._decode(z=encoded["z_mean"])["x_mean"].numpy()
        return encoded[output].numpy()


mlflow.models.set_model(AEVBPyfuncModel())
