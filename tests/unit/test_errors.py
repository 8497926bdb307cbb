import json

import pytest

from fleetchat import errors as E


@pytest.mark.parametrize(
    "cls,status,code",
    [
        (E.InvalidParameterError, 400, "invalid_value"),
        (E.ContextLengthExceededError, 400, "context_length_exceeded"),
        (E.AuthenticationError, 401, "invalid_api_key"),
        (E.PermissionDeniedError, 403, "permission_denied"),
        (E.ModelNotFoundError, 404, "model_not_found"),
        (E.OverloadedError, 429, "overloaded"),
        (E.NoWorkerAvailableError, 503, "no_worker_available"),
        (E.WorkerError, 502, "worker_failed"),
    ],
)
def test_error_round_trips_through_its_openai_body(cls, status, code):
    err = cls("something went wrong", param="temperature")
    body = E.error_body(err)
    assert body == {
        "error": {"message": "something went wrong", "type": cls.type, "param": "temperature", "code": code}
    }
    assert err.status == status
    back = E.error_from_body(status, json.loads(json.dumps(body)))
    assert type(back) is cls
    assert back.message == "something went wrong" and back.param == "temperature"


def test_sse_event_frames_the_same_body():
    err = E.ModelNotFoundError("no such model")
    event = E.error_sse_event(err)
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert json.loads(event[len("data: ") :]) == E.error_body(err)


def test_garbage_body_becomes_a_worker_error_quoting_it():
    back = E.error_from_body(500, "Internal Server Error")
    assert isinstance(back, E.WorkerError)
    assert "500" in back.message and "Internal Server Error" in back.message


def test_unknown_code_falls_back_on_status():
    back = E.error_from_body(429, {"error": {"message": "slow down", "code": "weird"}})
    assert isinstance(back, E.OverloadedError)


def test_as_fleetchat_error_wraps_foreign_exceptions():
    wrapped = E.as_fleetchat_error(ValueError("boom"))
    assert wrapped.status == 500 and "ValueError" in wrapped.message and "boom" in wrapped.message
    same = E.ModelNotFoundError("x")
    assert E.as_fleetchat_error(same) is same
