"""V2 request parsing: inputs the fuzzer (tests/fuzz) found, kept as regressions."""

from __future__ import annotations

import pytest

from llmserve.protocol.errors import ServingError
from llmserve.protocol.v2 import parse_inference_request


@pytest.mark.parametrize("datatype", [["a", "bc"], {"x": 1}, 5, None])
def test_a_datatype_that_is_not_a_string_is_a_400(datatype: object) -> None:
    """Found by atheris: a list as datatype raised TypeError (unhashable) -> the runtime's 500."""
    body = {"inputs": [{"name": "s", "shape": [2], "datatype": datatype, "data": ["a", "bc"]}]}
    with pytest.raises(ServingError) as caught:
        parse_inference_request(body)
    assert caught.value.status == 400
    assert "unknown datatype" in caught.value.message
