"""Every private BentoML name the service reaches is still where despliegue/bentoml_compat.py
says (it fails naming the reach on a BentoML upgrade), and nothing else reaches them."""

from __future__ import annotations

import ast
import asyncio
import importlib
import logging
from pathlib import Path

import pytest

from despliegue import bentoml_compat
from despliegue.bentoml_compat import REACHES, BentoMLChanged, Reach, reach

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = ("bentoml._internal", "_bentoml_sdk", "_bentoml_impl")


@pytest.mark.parametrize("private", REACHES, ids=lambda r: f"{r.module}.{r.attribute}")
def test_each_private_name_is_still_there(private: Reach) -> None:
    try:
        found = reach(private.module, private.attribute)
    except BentoMLChanged as exc:
        pytest.fail(f"BentoML moved a name the service relies on: {exc}")
    if private.attribute == "logger":  # the logger the service filters must be the module's own
        assert isinstance(found, logging.Logger) and found.name == private.module


def test_a_moved_name_is_reported_with_what_it_was_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """As an upgrade that moved `serve_http` would: the error names it and its use."""
    monkeypatch.delattr(importlib.import_module("_bentoml_impl.server"), "serve_http")
    with pytest.raises(
        BentoMLChanged, match=r"no _bentoml_impl\.server\.serve_http .*serving entry"
    ):
        bentoml_compat.serve_http()
    with pytest.raises(BentoMLChanged, match=r"no bentoml\._internal\.context\.no_such_name"):
        reach("bentoml._internal.context", "no_such_name")


def test_the_accessors_answer() -> None:
    assert Path(bentoml_compat.bentoml_home()).is_absolute()
    assert isinstance(bentoml_compat.service_urls(), dict)
    assert bentoml_compat.api_server_name()
    assert hasattr(bentoml_compat.http_instruments(), "RunnerTrafficMetricsMiddleware")


def private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if node.value.startswith(PRIVATE) else []
        found += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.startswith(PRIVATE)]
    return found


def test_no_other_module_of_the_product_reaches_private_bentoml() -> None:
    sources = [
        ROOT / "service.py",
        ROOT / "save_models.py",
        *ROOT.glob("despliegue/**/*.py"),
        *ROOT.glob("runners/*.py"),
        *ROOT.glob("scripts/*.py"),
        *ROOT.glob("benchmarks/**/*.py"),
    ]
    reaches = [
        hit for path in sources if path.name != "bentoml_compat.py" for hit in private_imports(path)
    ]
    assert reaches == [], "reach private BentoML through despliegue/bentoml_compat.py"


def test_adaptive_batching_learns_without_holding_a_lone_request() -> None:
    """A client sends a request, then a second one 50 ms later, twelve times, through BentoML's
    real dispatcher. Unpatched, the call that trains batches of 2 is held for up to
    (2·2+1)·a+b seconds (a, b: its cost estimate, kept here at its start values, 1.33 and
    0.67 s for a 20 s deadline) and leaves merged with the later request; patched, every call
    leaves as it comes, so no batch holds two requests."""
    from bentoml._internal.marshal.dispatcher import CorkDispatcher

    from despliegue.bentoml_compat import batching_never_holds_a_lone_request

    batching_never_holds_a_lone_request()
    batching_never_holds_a_lone_request()  # idempotent: wrapped once

    async def client() -> tuple[list[int], list[int]]:
        dispatcher = CorkDispatcher(
            max_latency_in_ms=20_000,
            max_batch_size=8,
            fallback=lambda: None,
            get_batch_size=lambda item: 1,
        )
        dispatcher.optimizer.trigger_refresh = lambda: None  # keep the start estimate
        batch_sizes: list[int] = []

        async def model(items: list[int]) -> list[int]:
            batch_sizes.append(len(items))
            return [item * 2 for item in items]

        call = dispatcher(model)
        answers: list[int] = []
        for pair in range(12):  # past every training phase
            first = asyncio.create_task(call(2 * pair))
            await asyncio.sleep(0.05)  # the first call is sent, or held, meanwhile
            answers.extend(await asyncio.gather(first, call(2 * pair + 1)))
        dispatcher.shutdown()
        return answers, batch_sizes

    answers, batch_sizes = asyncio.run(client())
    assert answers == [item * 2 for item in range(24)]
    assert batch_sizes == [1] * 24, batch_sizes  # unpatched: one batch of 2 (the held call)


def test_media_types_are_worked_out_once_per_class_with_bentomls_answers() -> None:
    """The media type BentoML gives each kind of method input and output is the same with the
    cache as without it, the schema behind a root model's is built once however many responses
    use it, and a media type set on the class afterwards (as BentoML does for streams) wins."""
    from pathlib import Path as FilePath
    from typing import Annotated

    import numpy as np
    from _bentoml_sdk.io_models import IOMixin, ensure_io_descriptor
    from bentoml.validators import ContentType
    from PIL import Image
    from pydantic import BaseModel

    from despliegue.bentoml_compat import media_types_worked_out_once
    from despliegue.contracts import Answered

    media_types_worked_out_once()
    media_types_worked_out_once()  # idempotent: wrapped once
    worked_out = IOMixin.__dict__["mime_type"].__func__
    assert worked_out.once_per_class
    uncached = worked_out.__wrapped__
    assert not getattr(uncached, "once_per_class", False)

    class Plain(BaseModel):
        name: str

    kinds = {
        "a runner's answers": list[Answered],
        "arrays": list[np.ndarray],
        "text": str,
        "an image": Image.Image,
        "a PDF file": Annotated[FilePath, ContentType("application/pdf")],
        "a model": Plain,
    }
    expected = {"text": "text/plain", "an image": "image/*", "a PDF file": "application/pdf"}
    for kind, annotation in kinds.items():
        descriptor = ensure_io_descriptor(annotation)
        assert descriptor.mime_type() == uncached(descriptor), kind
        assert descriptor.mime_type() == expected.get(kind, "application/json"), kind

    answers = ensure_io_descriptor(list[Answered])
    schema = answers.model_json_schema
    built = 0

    def counted(*args: object, **kwargs: object) -> dict:
        nonlocal built
        built += 1
        return schema(*args, **kwargs)

    answers.model_json_schema = counted  # type: ignore[method-assign]
    for _ in range(100):
        assert answers.mime_type() == "application/json"
    assert built == 1
    answers.media_type = "text/event-stream"
    assert answers.mime_type() == "text/event-stream"


def test_api_methods_are_bound_once_per_instance_and_answer_as_before() -> None:
    """The caller BentoML's server gets for a method is built on the first lookup and reused;
    it is bound to its own instance, keeps the method's signature without `self`, still fills
    a parameter's `Field` default as BentoML does, and goes with its instance when that is
    dropped."""
    import gc
    import inspect
    import weakref

    import bentoml
    from pydantic import Field

    from despliegue.bentoml_compat import api_methods_bound_once

    api_methods_bound_once()
    api_methods_bound_once()  # idempotent: wrapped once

    @bentoml.service
    class Scaler:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        @bentoml.api
        def scale(self, value: int, offset: int = Field(default=3)) -> int:
            return value * self.factor + offset

    twice, thrice = Scaler.inner(2), Scaler.inner(3)
    first = twice.scale.local
    assert twice.scale.local is first  # built once
    assert list(inspect.signature(first).parameters) == ["value", "offset"]
    assert first(5) == 13 and first(5, offset=0) == 10
    assert thrice.scale.local is not first and thrice.scale.local(5) == 18
    dropped = weakref.ref(thrice)
    del thrice
    gc.collect()
    assert dropped() is None  # the kept callers go with their instance
