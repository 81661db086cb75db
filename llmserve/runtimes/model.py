"""V2Model: what a predictive runtime implements. Async hooks only; the data plane never inspects them.

`load` reads the artifact (run blocking work in a thread: the server keeps answering meanwhile), `predict`
maps input tensors (numpy data) to output tensors whose first dimension is the batch, `unload` frees what
`load` took, `explain` is optional. Inputs arrive already decoded, merged across requests by the batcher,
and outputs are split back per request by the data plane.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import InferTensor, ModelMetadata, TensorMetadata
from llmserve.runtimes.settings import ModelSettings


class V2Model(ABC):
    platform: str = "llmserve"

    def __init__(self, settings: ModelSettings, model_dir: Path) -> None:
        self.settings = settings
        self.model_dir = model_dir

    @abstractmethod
    async def load(self) -> None: ...

    @abstractmethod
    async def predict(self, inputs: Sequence[InferTensor], outputs: Sequence[str]) -> list[InferTensor]:
        """Output tensors named `outputs`, in that order; numpy data, batch first."""

    async def unload(self) -> None:
        return None

    async def explain(self, inputs: Sequence[InferTensor]) -> list[InferTensor]:
        raise ServingError(400, f"Model '{self.settings.name}' ({self.platform}) does not support explain.")

    @property
    @abstractmethod
    def output_names(self) -> tuple[str, ...]:
        """Every output this model can produce; the first is the default."""

    @abstractmethod
    def input_metadata(self) -> tuple[TensorMetadata, ...]: ...

    @abstractmethod
    def output_metadata(self) -> tuple[TensorMetadata, ...]: ...

    @property
    def default_outputs(self) -> tuple[str, ...]:
        return tuple(self.settings.outputs) if self.settings.outputs else self.output_names[:1]

    def metadata(self) -> ModelMetadata:
        inputs = self.input_metadata()
        if self.settings.inputs_metadata:
            inputs = tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in self.settings.inputs_metadata)
        return ModelMetadata(
            name=self.settings.name,
            platform=self.platform,
            versions=(self.settings.version,) if self.settings.version else (),
            inputs=inputs,
            outputs=self.output_metadata(),
        )
