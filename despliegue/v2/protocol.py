"""The Open Inference Protocol's (KServe V2) REST wire format: tensors in, tensors out.

Pure functions, no service: an infer request body (JSON, or JSON followed by the binary-data
extension's raw tensors, `Inference-Header-Content-Length` saying where the JSON ends) becomes
named numpy arrays; named arrays become the response body, each output in JSON or in binary as
the client asked. Every refusal is a `V2Error` naming the tensor and the rule, answered with
the product's error body (`{"error": "<tensor>: <rule>", "detail": [...]}`), which is the
protocol's `{"error": ...}` with the detail added.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import numpy as np

from despliegue.errors import ClientError

HEADER_LENGTH = "inference-header-content-length"

# The protocol's numeric datatypes and their numpy types (BYTES is handled on its own).
NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(kind)
    for name, kind in {
        "BOOL": "bool",
        "UINT8": "<u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "<i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
DATATYPES = frozenset({*NUMPY_TYPES, "BYTES"})


class V2Error(ClientError):
    """A request the protocol refuses; `loc` names the tensor (or the model, the body)."""

    def __init__(
        self, loc: list[str | int], msg: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST
    ) -> None:
        super().__init__(loc, msg, kind="v2_error", status=status)


@dataclass
class InferRequest:
    """A decoded infer request: its inputs by name, and how each output is wanted."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    request_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Output names the client asked for, in order (None: every output), and which in binary.
    outputs: list[str] | None = None
    binary_outputs: set[str] = field(default_factory=set)
    all_binary: bool = False


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request's tensors, from JSON data or from the binary section that follows the JSON."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise V2Error(
                ["header", HEADER_LENGTH],
                "must be the JSON header's length in bytes, at most the body's length",
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    else:
        json_part, binary = body, b""
    try:
        document = json.loads(json_part)
    except ValueError as exc:
        document = whole_json(body, binary) if binary else None
        if document is None:
            raise V2Error(["body"], f"not JSON: {exc}") from None
        binary = b""
    if not isinstance(document, dict):
        raise V2Error(["body"], "must be a JSON object with `inputs`")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise V2Error(["inputs"], "a non-empty list of tensors is required")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        name, datatype, shape = tensor_header(raw, ["inputs", index])
        size = parameters_of(raw, name).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise V2Error(
                    [name], f"binary_data_size {size!r} runs past the body's binary section"
                )
            array = from_binary(name, datatype, shape, binary[offset : offset + size])
            offset += size
        else:
            if "data" not in raw:
                raise V2Error([name], "no `data` and no `parameters.binary_data_size`")
            array = from_json(name, datatype, shape, raw["data"])
        if name in inputs:
            raise V2Error([name], "given more than once")
        inputs[name], datatypes[name] = array, datatype
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise V2Error(["parameters"], "must be an object")
    outputs, binary_outputs = None, set()
    if isinstance(document.get("outputs"), list):
        outputs = []
        for index, wanted in enumerate(document["outputs"]):
            if not isinstance(wanted, dict) or not isinstance(wanted.get("name"), str):
                raise V2Error(["outputs", index], "each requested output needs a `name`")
            outputs.append(wanted["name"])
            if parameters_of(wanted, wanted["name"]).get("binary_data"):
                binary_outputs.add(wanted["name"])
    request_id = document.get("id")
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        request_id=str(request_id) if request_id is not None else None,
        parameters=parameters,
        outputs=outputs,
        binary_outputs=binary_outputs,
        all_binary=bool(parameters.get("binary_data_output")),
    )


def parameters_of(raw: dict[str, Any], name: str) -> dict[str, Any]:
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise V2Error([name, "parameters"], "must be an object")
    return parameters


def whole_json(body: bytes, binary: bytes) -> Any:
    """The whole body as a JSON request with no binary tensors, or None. The kserve SDK counts
    the JSON header's length in characters, not bytes, and sends it with JSON-only requests:
    non-ASCII text then cuts the header short of its end."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, list) or any(
        isinstance(raw, dict)
        and isinstance(raw.get("parameters"), dict)
        and "binary_data_size" in raw["parameters"]
        for raw in inputs
    ):
        return None
    return document


def tensor_header(raw: Any, loc: list[str | int]) -> tuple[str, str, list[int]]:
    """A tensor's name, datatype and shape, each checked."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise V2Error(loc, "each input needs a `name`, a `datatype`, a `shape`")
    name = raw["name"]
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise V2Error([name], f"datatype {datatype!r} is not one of {', '.join(sorted(DATATYPES))}")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or not shape
    ):
        raise V2Error([name], f"shape {shape!r} must be a list of non-negative integers")
    return name, datatype, shape


def from_json(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """A tensor from its JSON `data` (flat or nested, row-major)."""
    flat = list(flatten(data))
    expected = int(np.prod(shape))
    if len(flat) != expected:
        raise V2Error([name], f"shape {shape} holds {expected} elements, `data` has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in flat):
            raise V2Error([name], "BYTES data in JSON must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [item.encode() for item in flat]
        return array.reshape(shape)
    if any(isinstance(item, str) or item is None for item in flat):
        raise V2Error([name], f"{datatype} data must be numbers")
    try:
        return np.asarray(flat, dtype=NUMPY_TYPES[datatype]).reshape(shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise V2Error([name], f"data is not {datatype}: {exc}") from None


def flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from flatten(item)
    else:
        yield data


def from_binary(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """A tensor from the binary-data extension: little-endian elements; BYTES elements each
    preceded by their length as a 4-byte little-endian integer."""
    expected = int(np.prod(shape))
    if datatype == "BYTES":
        items: list[bytes] = []
        position = 0
        while position < len(raw):
            if position + 4 > len(raw):
                raise V2Error([name], "a BYTES element's 4-byte length is cut short")
            (length,) = struct.unpack_from("<I", raw, position)
            position += 4
            if position + length > len(raw):
                raise V2Error([name], "a BYTES element runs past its binary_data_size")
            items.append(raw[position : position + length])
            position += length
        if len(items) != expected:
            raise V2Error([name], f"shape {shape} holds {expected} elements, got {len(items)}")
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = NUMPY_TYPES[datatype]
    if len(raw) != expected * dtype.itemsize:
        raise V2Error(
            [name],
            f"shape {shape} of {datatype} takes {expected * dtype.itemsize} bytes, "
            f"binary_data_size is {len(raw)}",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@dataclass(frozen=True)
class Output:
    """One output tensor of an answer."""

    name: str
    datatype: str
    array: np.ndarray


def encode_response(
    model_name: str, model_version: str, request: InferRequest, outputs: list[Output]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON then the binary outputs (with
    `Inference-Header-Content-Length`) when the client asked any output in binary."""
    by_name = {output.name: output for output in outputs}
    names = request.outputs if request.outputs is not None else list(by_name)
    for index, name in enumerate(names):
        if name not in by_name:
            raise V2Error(
                ["outputs", index], f"{name!r} is not an output; outputs: {', '.join(by_name)}"
            )
    tensors, chunks = [], []
    for name in names:
        output = by_name[name]
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if request.all_binary or name in request.binary_outputs:
            raw = to_binary(output)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = to_json(output)
        tensors.append(tensor)
    document: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": tensors,
    }
    if request.request_id is not None:
        document["id"] = request.request_id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + b"".join(chunks), headers


def to_json(output: Output) -> list[Any]:
    flat = output.array.reshape(-1)
    if output.datatype == "BYTES":
        return [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    return flat.astype(NUMPY_TYPES[output.datatype]).tolist()


def to_binary(output: Output) -> bytes:
    flat = output.array.reshape(-1)
    if output.datatype == "BYTES":
        parts = []
        for item in flat:
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return flat.astype(NUMPY_TYPES[output.datatype]).tobytes()
