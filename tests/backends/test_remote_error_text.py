"""A server's error body becomes one readable line (remote_answers.error_message), whatever its shape.

The validation reports are made by pydantic itself (the library FastAPI and llama_cpp.server use),
not written by hand: FastAPI answers a 422 with ``{"detail": exc.errors()}``; llama_cpp.server
puts ``str(exc)`` and a stack frame in an OpenAI-shaped 500.
"""

from __future__ import annotations

import json

import pytest

from sentech_eval.backends.remote_answers import MAX_ERROR_CHARS, error_message

pydantic = pytest.importorskip("pydantic")


class Body(pydantic.BaseModel):
    top_p: float = pydantic.Field(le=1.0)
    max_tokens: int = pydantic.Field(ge=1)


def validation_error() -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as caught:
        Body(top_p=9, max_tokens=0)
    return caught.value


def test_fastapi_422_field_list_names_each_field():
    errors = validation_error().errors(include_url=False)
    for item in errors:
        item["loc"] = ["body", *item["loc"]]
    raw = json.dumps({"detail": errors}, default=str).encode()
    assert error_message(422, raw) == (
        "HTTP 422: body.top_p: Input should be less than or equal to 1; "
        "body.max_tokens: Input should be greater than or equal to 1"
    )


def test_pydantic_report_with_a_stack_frame_keeps_fields_and_drops_the_frame():
    text = (
        str(validation_error())
        + '\n\n  File "/srv/app.py", line 376, in create_chat_completion\n    POST /v1/chat/completions'
    )
    raw = json.dumps({"error": {"message": text, "type": "internal_server_error"}}).encode()
    message = error_message(500, raw)
    # pydantic's own str() differs from llama_cpp.server's repr form: either way no frame, one line
    assert "File " not in message and "\n" not in message and "top_p" in message


def test_a_traceback_in_a_detail_string_is_cut_and_long_text_capped():
    raw = json.dumps({"detail": 'engine failed\nTraceback (most recent call last):\n  File "x.py", line 1'}).encode()
    assert error_message(500, raw) == "HTTP 500: engine failed"
    long = json.dumps({"detail": "x" * 5000}).encode()
    assert len(error_message(500, long)) <= len("HTTP 500: ") + MAX_ERROR_CHARS + 1


@pytest.mark.parametrize("detail", [{"code": 7}, 42, ["plain", "strings"]])
def test_other_detail_shapes_are_shown_compactly(detail):
    message = error_message(400, json.dumps({"detail": detail}).encode())
    assert message.startswith("HTTP 400: ") and "\n" not in message and len(message) < 120
