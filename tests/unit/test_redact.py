"""Unit tests for mongoferry.infra.redact and the redacting log formatters of mongoferry.infra.logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from mongoferry.infra import redact as redact_module
from mongoferry.infra.logs import JsonFormatter, TextFormatter
from mongoferry.infra.redact import RedactingFilter, redact, redact_uri, register_secret, register_uri


@pytest.fixture(autouse=True)
def isolated_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no remembered secret and leaves none behind."""
    monkeypatch.setattr(redact_module, "_secrets", set())
    yield


# ---------------------------------------------------------------- redact_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mongodb://alice:s3cret@db1:27017/app", "mongodb://alice:***@db1:27017/app"),
        (
            "mongodb://alice:s3cret@db1:27017,db2:27018/app?replicaSet=rs0&authSource=admin",
            "mongodb://alice:***@db1:27017,db2:27018/app?replicaSet=rs0&authSource=admin",
        ),
        (
            "mongodb+srv://bob:hunter2@cluster0.example.net/?retryWrites=true",
            "mongodb+srv://bob:***@cluster0.example.net/?retryWrites=true",
        ),
        ("redis://:redispw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://default:redispw@cache:6379", "redis://default:***@cache:6379"),
        ("rediss://u:pw@cache:6380", "rediss://u:***@cache:6380"),
        ("mongodb://alice:p%40ss@db1/", "mongodb://alice:***@db1/"),
        ("mongodb://alice:p%2Fss%3Aw%25rd@db1/", "mongodb://alice:***@db1/"),
        ("mongodb://alice:p:a!s$s#w&o*r(d)@db1/", "mongodb://alice:***@db1/"),
        ("mongodb://al%40ice:pw@db1/", "mongodb://al%40ice:***@db1/"),
    ],
)
def test_redact_uri_hides_password(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://db1:27017/app",
        "mongodb://db1:27017,db2:27018/app?replicaSet=rs0",
        "mongodb://alice@db1:27017/?authMechanism=MONGODB-X509",
        "mongodb+srv://cluster0.example.net/app",
        "redis://cache:6379/0",
        "redis://cache",
        "not a uri at all",
    ],
)
def test_redact_uri_leaves_uri_without_password_alone(uri: str) -> None:
    assert redact_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "secret"),
    [
        ("mongodb://u:s3cret/PW@127.0.0.1:28101/", "s3cret/PW"),       # unescaped `/`: an invalid URI
        ("mongodb://u:s3cret@PW@127.0.0.1:28101/", "s3cret@PW"),       # unescaped `@`
        ("mongodb://u@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:s3cretTok",
         "s3cretTok"),
        ("mongodb://u:pw@h/?tls=true&tlsCertificateKeyFilePassword=s3cretKP&x=1", "s3cretKP"),
        ("mongodb://app:it's\"PW@h/", "it's\"PW"),                   # quotes are valid password characters
    ],
)
def test_redact_uri_hides_malformed_passwords_and_secret_options(uri: str, secret: str) -> None:
    out = redact_uri(uri)
    assert secret not in out and "PW" not in out and "***" in out
    register_uri(uri)
    assert secret not in redact(f"error: {uri[uri.index('://') + 3:]} is not valid ({secret})")


def test_only_the_aws_token_of_mechanism_properties_is_a_secret() -> None:
    register_uri("mongodb://h/?authMechanism=GSSAPI&authMechanismProperties=SERVICE_NAME:mongodb,"
                 "CANONICALIZE_HOST_NAME:true")
    assert redact("mongodb is true") == "mongodb is true"


def test_redact_uri_handles_several_uris_in_one_text() -> None:
    text = "copy mongodb://a:pw1@src/ to mongodb+srv://b:pw2@dst.example.net/ and redis://:pw3@r:6379"
    out = redact_uri(text)
    assert out == "copy mongodb://a:***@src/ to mongodb+srv://b:***@dst.example.net/ and redis://:***@r:6379"
    for pw in ("pw1", "pw2", "pw3"):
        assert pw not in out


# ---------------------------------------------------------------- register_uri + redact


def test_registered_password_is_removed_from_any_text() -> None:
    register_uri("mongodb://alice:Tr0ub4dor@db1:27017/app")
    text = "auth failed (password Tr0ub4dor rejected); retry with Tr0ub4dor?"
    out = redact(text)
    assert "Tr0ub4dor" not in out
    assert out == "auth failed (password *** rejected); retry with ***?"


def test_redact_without_registration_still_hides_uri_password() -> None:
    assert redact("connecting to mongodb://alice:zz9plural@db1/") == "connecting to mongodb://alice:***@db1/"
    assert redact("bare zz9plural stays, nothing was registered") == "bare zz9plural stays, nothing was registered"


def test_registered_percent_encoded_password_is_removed_in_both_forms() -> None:
    register_uri("mongodb://alice:p%40ssw0rd%21@db1/")
    out = redact("encoded p%40ssw0rd%21, decoded p@ssw0rd!, in a uri mongodb://alice:p%40ssw0rd%21@db1/")
    assert "p%40ssw0rd%21" not in out
    assert "p@ssw0rd!" not in out
    assert "ssw0rd" not in out
    assert out == "encoded ***, decoded ***, in a uri mongodb://alice:***@db1/"


def test_registered_password_with_special_chars_is_removed_when_written_encoded() -> None:
    register_secret("p@ss/w:rd")
    out = redact("raw p@ss/w:rd and encoded p%40ss%2Fw%3Ard")
    assert "w:rd" not in out
    assert "w%3Ard" not in out
    assert out == "raw *** and encoded ***"


def test_register_uri_without_password_registers_nothing() -> None:
    register_uri("mongodb://db1:27017/app")
    register_uri("mongodb://alice@db1:27017/app")
    register_uri("mongodb://alice:@db1:27017/app")
    assert redact_module._secrets == set()
    assert redact("alice db1 27017 app") == "alice db1 27017 app"


def test_register_secret_ignores_empty_string() -> None:
    register_secret("")
    assert redact_module._secrets == set()
    assert redact("text") == "text"


def test_longer_secret_is_replaced_before_its_prefix() -> None:
    register_secret("abc")
    register_secret("abcdef")
    assert redact("x abcdef y abc z") == "x *** y *** z"


def test_redis_password_is_registered() -> None:
    register_uri("redis://:cache-Secret-9@cache:6379/0")
    assert redact("NOAUTH cache-Secret-9 invalid") == "NOAUTH *** invalid"


# ---------------------------------------------------------------- RedactingFilter


def make_record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("mongoferry.test", logging.INFO, __file__, 1, msg, args or None, None)


def test_filter_rewrites_record_with_percent_args() -> None:
    register_uri("mongodb://alice:F1lterPw@db1/")
    record = make_record("connecting to %s as %s (pw %s)", "mongodb://alice:F1lterPw@db1/", "alice", "F1lterPw")
    assert RedactingFilter().filter(record) is True
    assert record.args is None
    assert record.msg == "connecting to mongodb://alice:***@db1/ as alice (pw ***)"
    assert record.getMessage() == "connecting to mongodb://alice:***@db1/ as alice (pw ***)"


def test_filter_renders_args_even_without_secret() -> None:
    record = make_record("copied %d docs of %s", 5, "shop.orders")
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "copied 5 docs of shop.orders"
    assert record.args is None


def test_filter_keeps_clean_record_untouched() -> None:
    record = make_record("nothing secret here")
    assert RedactingFilter().filter(record) is True
    assert record.msg == "nothing secret here"


def test_filter_on_logger_redacts_handler_output() -> None:
    register_uri("mongodb://alice:L0ggerPw@db1/")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.Logger("mongoferry.test.filter")
    logger.addHandler(handler)
    logger.warning("server said: bad password %r", "L0ggerPw")
    assert "L0ggerPw" not in stream.getvalue()
    assert stream.getvalue() == "server said: bad password '***'\n"


# ---------------------------------------------------------------- formatters


def formatted_logger(formatter: logging.Formatter, name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.Logger(name, logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream


def test_json_formatter_never_emits_password() -> None:
    uri = "mongodb://alice:Js0nSecret%40x@db1/app"
    register_uri(uri)
    logger, stream = formatted_logger(JsonFormatter(), "mongoferry.test.json")
    logger.info("connecting to %s", uri)
    logger.info("plain", extra={"uri": uri, "pw": "Js0nSecret@x"})
    logger.error("auth failed for password %s", "Js0nSecret@x")
    try:
        raise RuntimeError(f"cannot log in to {uri} with Js0nSecret@x")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    assert "Js0nSecret" not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    assert lines[0]["msg"] == "connecting to mongodb://alice:***@db1/app"
    assert lines[0]["level"] == "info"
    assert lines[0]["logger"] == "mongoferry.test.json"
    assert lines[1]["uri"] == "mongodb://alice:***@db1/app"
    assert lines[1]["pw"] == "***"
    assert lines[2]["msg"] == "auth failed for password ***"
    assert "RuntimeError" in lines[3]["exc"]
    assert "Js0nSecret" not in lines[3]["exc"]


@pytest.mark.parametrize(
    ("uri", "decoded"),
    [
        ("mongodb://alice:sh%22hh@db1/", 'sh"hh'),
        ("mongodb://alice:back%5Cslash@db1/", "back\\slash"),
        ("mongodb://alice:p%C3%A4sswort@db1/", "pässwort"),
    ],
)
def test_json_formatter_never_emits_password_that_json_escapes(uri: str, decoded: str) -> None:
    """A password with a quote, a backslash or a non-ASCII letter is written by json.dumps in escaped
    form; the decoded JSON line must still not contain it."""
    register_uri(uri)
    logger, stream = formatted_logger(JsonFormatter(), "mongoferry.test.json.escape")
    logger.error("auth failed for password %s", decoded)
    record = json.loads(stream.getvalue())
    assert decoded not in record["msg"], f"password leaked in JSON log line: {stream.getvalue()!r}"
    assert record["msg"] == "auth failed for password ***"


def test_text_formatter_never_emits_password() -> None:
    uri = "mongodb+srv://bob:T3xt%2Fpw@cluster.example.net/"
    register_uri(uri)
    logger, stream = formatted_logger(TextFormatter(), "mongoferry.test.text")
    logger.info("connecting to %s", uri)
    logger.warning("retry", extra={"uri": uri, "decoded": "T3xt/pw"})
    logger.error('auth failed for password "%s"', "T3xt/pw")
    out = stream.getvalue()
    assert "T3xt" not in out
    assert out.splitlines() == [
        "info    connecting to mongodb+srv://bob:***@cluster.example.net/",
        "warning retry uri=mongodb+srv://bob:***@cluster.example.net/ decoded=***",
        'error   auth failed for password "***"',
    ]


@pytest.mark.parametrize("password", ['sh"hh', "back\\slash", "pässwort"])
def test_text_formatter_never_emits_special_password(password: str) -> None:
    register_secret(password)
    logger, stream = formatted_logger(TextFormatter(), "mongoferry.test.text.special")
    logger.error("auth failed for password %s", password)
    assert stream.getvalue() == "error   auth failed for password ***\n"


def test_json_handler_with_filter_never_emits_escaped_password_in_traceback() -> None:
    """The set-up of setup_logging (RedactingFilter + JsonFormatter): the filter cleans the message,
    but a traceback and extra fields are only redacted by the formatter."""
    register_uri("mongodb://alice:p%C3%A4sswort@db1/")
    logger, stream = formatted_logger(JsonFormatter(), "mongoferry.test.json.traceback")
    logger.handlers[0].addFilter(RedactingFilter())
    try:
        raise RuntimeError("server rejected password pässwort")
    except RuntimeError:
        logger.debug("unexpected error", exc_info=True)
    record = json.loads(stream.getvalue())
    assert record["msg"] == "unexpected error"
    assert "RuntimeError: server rejected password" in record["exc"]
    assert "pässwort" not in record["exc"], f"password leaked in JSON traceback: {stream.getvalue()!r}"
