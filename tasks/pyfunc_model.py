"""MLflow pyfunc model *from code* wrapping the aevb SavedModel (docs/design.md "MLflow").

MLflow copies this file into the logged model, so it must stand alone: it imports only numpy,
pandas (an mlflow dependency), mlflow and tensorflow, never this project. Nothing is pickled.

    predict(x)                                    -> z_mean          [N, latent_dim]
    predict(x, params={"output": "z_std"})        -> z_std           [N, latent_dim]
    predict(x, params={"output": "reconstruction"}) -> E[x | z=z_mean] [N, D]

``x`` is a float32 array (or DataFrame) of model-space inputs, shape [N, D].
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

OUTPUTS = ("z_mean", "z_std", "reconstruction")


class AEVBPyfuncModel(PythonModel):
    def load_context(self, context):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(context.artifacts["saved_model"])
        self._encode = self._model.signatures["encode"]
        self._decode = self._model.signatures["decode"]

    def predict(self, context, model_input, params=None):
        output = (params or {}).get("output", "z_mean")
        if output not in OUTPUTS:
            raise ValueError(f"params['output']={output!r}; choose one of {', '.join(OUTPUTS)}")
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        x = x.reshape(x.shape[0], -1)
        encoded = self._encode(x=self._tf.constant(x))
        if output == "reconstruction":
            return self._decode(z=encoded["z_mean"])["x_mean"].numpy()
        return encoded[output].numpy()


mlflow.models.set_model(AEVBPyfuncModel())
