"""The MLServer peer: the sklearn families on MLServer's own scikit-learn runtime, the Keras
ones (and MTCNN) on `PathRuntime`, this custom runtime. The model repository `mlserver
start` serves (adaptive batching per model) is written by benchmarks/peers/launch.py.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from benchmarks.peers.models import load, read_manifest


class PathRuntime(MLModel):
    """One benchmark path's model (benchmarks/peers/models.py) behind the V2 protocol:
    BYTES in for Base64 images, FP64 rows for feature vectors; one output row per item
    (a JSON string per item where answers are ragged, as face boxes are)."""

    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.path = extra["path"]
        self.model = load(self.path, read_manifest(extra["manifest"]))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        request_input = payload.inputs[0]
        if request_input.datatype == "BYTES":
            items: Any = StringCodec.decode_input(request_input)
        else:
            items = NumpyCodec.decode_input(request_input).tolist()
        answers = self.model(items)
        if self.path == "face":
            output = StringCodec.encode_output("faces", [json.dumps(rows) for rows in answers])
        else:
            output = NumpyCodec.encode_output("answers", np.asarray(answers, dtype=float))
        return InferenceResponse(model_name=self.name, outputs=[output])
