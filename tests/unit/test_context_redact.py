"""Secret redaction in environments and argv. A leak here is a security bug."""

from __future__ import annotations

import pytest

from provtrace.tracer.context.redact import (
    REDACTED, is_secret_name, redact_argv, redact_env, redact_text, to_text,
)

SECRET = "hunter2-S3cr3t"


@pytest.mark.parametrize("name", [
    "GITHUB_TOKEN", "github_token", "GH_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "aws_profile_x",
    "DB_PASSWORD", "db_password", "MYSQL_PASSWD", "PGPASS", "MYSQL_PWD", "SSH_PASSPHRASE",
    "api_key", "API_KEY", "OPENAI_API_KEY", "STRIPE_SECRET", "client_secret",
    "GOOGLE_APPLICATION_CREDENTIALS", "docker_credential", "PRIVATE_KEY", "NPM_AUTH",
    "HTTP_AUTHORIZATION", "SESSION_COOKIE", "PHPSESSID", "JUPYTER_TOKEN", "Secret",
])
def test_secret_names_are_redacted(name: str) -> None:
    assert is_secret_name(name)
    assert redact_env({name: SECRET}) == {name: REDACTED}


@pytest.mark.parametrize("name", ["HOME", "PATH", "PWD", "OLDPWD", "LANG", "SHELL", "USER",
                                  "GIT_AUTHOR_NAME", "JUPYTER_PATH", "CUDA_VISIBLE_DEVICES"])
def test_ordinary_names_are_kept(name: str) -> None:
    assert not is_secret_name(name)
    assert redact_env({name: "/some/value"}) == {name: "/some/value"}


@pytest.mark.parametrize("value,expected", [
    ("postgres://u:p@h/db", f"postgres://u:{REDACTED}@h/db"),
    ("https://user:pw@host/x", f"https://user:{REDACTED}@host/x"),
    ("https://user:p@ss:w0rd@host/x", f"https://user:{REDACTED}@host/x"),
    ("mysql://root:@localhost/db", f"mysql://root:{REDACTED}@localhost/db"),
    ("https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/o/r.git",
     f"https://{REDACTED}@github.com/o/r.git"),
    ("proxy=http://a:b@p:3128 other=https://c:d@q", f"proxy=http://a:{REDACTED}@p:3128 "
                                                    f"other=https://c:{REDACTED}@q"),
    ("https://host/path?access_token=abc&page=2", f"https://host/path?access_token={REDACTED}&page=2"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AK&X-Amz-Signature=ff&x=1",
     f"https://b.s3.amazonaws.com/k?X-Amz-Credential={REDACTED}&X-Amz-Signature={REDACTED}&x=1"),
    ("https://blob/x?sv=2020&sig=abc%3D", f"https://blob/x?sv=2020&sig={REDACTED}"),
    ("https://host/plain/path", "https://host/plain/path"),
    ("Authorization: Bearer eyJhbGciOi.abc.def", f"Authorization: Bearer {REDACTED}"),
    ("basic dXNlcjpwYXNz", f"basic {REDACTED}"),
    ("basic usage of the tool", "basic usage of the tool"),
    ("token is ghp_abcdefghijklmnopqrstuvwxyz0123 here", f"token is {REDACTED} here"),
    ("AKIAIOSFODNN7EXAMPLE", REDACTED),
    ("xoxb-123456789012-abcdefghij", REDACTED),
    ("sk-abcdefghijklmnopqrstuvwxyz", REDACTED),
    ("glpat-abcdefghijklmnopqrstu", REDACTED),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", REDACTED),
])
def test_secrets_inside_values(value: str, expected: str) -> None:
    assert redact_text(value) == expected
    assert redact_env({"SOME_SETTING": value}) == {"SOME_SETTING": expected}


def test_database_url() -> None:
    env = redact_env({"DATABASE_URL": "postgres://u:p@h/db"})
    assert env == {"DATABASE_URL": f"postgres://u:{REDACTED}@h/db"}
    assert ":p@" not in env["DATABASE_URL"]


def test_non_utf8_values_and_names() -> None:
    env = redact_env({
        b"API_TOKEN": b"\xff\xfe" + SECRET.encode(),
        "BLOB": b"\xffhttps://u:pw@h/",
        "SURROGATE": "caf\udce9 https://u:pw@h",  # os.environ style surrogateescape
        "PASSWORD_RAW": "\udcff" + SECRET,
    })
    assert env["API_TOKEN"] == REDACTED
    assert env["BLOB"] == f"\\xffhttps://u:{REDACTED}@h/"
    assert env["SURROGATE"] == f"caf\\xe9 https://u:{REDACTED}@h"
    assert env["PASSWORD_RAW"] == REDACTED
    for value in env.values():
        value.encode("utf-8")  # all JSON-safe text
    assert to_text(b"ok") == "ok"


def test_no_secret_survives_anywhere() -> None:
    env = {"GITHUB_TOKEN": SECRET, "api_key": SECRET, "AWS_REGION_SECRETISH": SECRET,
           "REPO": f"https://x:{SECRET}@h/r", "DATABASE_URL": f"postgres://u:{SECRET}@h/db",
           "HDR": f"Bearer {SECRET}", "Q": f"https://h/?token={SECRET}"}
    out = redact_env(env)
    assert set(out) == set(env)
    assert not any(SECRET in v for v in out.values()), out


def test_empty_env() -> None:
    assert redact_env(None) == {}
    assert redact_env({}) == {}


@pytest.mark.parametrize("argv,expected", [
    (["tool", "--password=x1"], ["tool", f"--password={REDACTED}"]),
    (["tool", "--password", "x1", "--verbose"], ["tool", "--password", REDACTED, "--verbose"]),
    (["tool", "--token", "abc"], ["tool", "--token", REDACTED]),
    (["tool", "--api-key=abc", "--api_key", "def"],
     ["tool", f"--api-key={REDACTED}", "--api_key", REDACTED]),
    (["tool", "--client-secret", "s", "--db-passwd=q"],
     ["tool", "--client-secret", REDACTED, f"--db-passwd={REDACTED}"]),
    (["tool", "-token=abc"], ["tool", f"-token={REDACTED}"]),
    (["git", "clone", "https://user:pw@github.com/o/r"],
     ["git", "clone", f"https://user:{REDACTED}@github.com/o/r"]),
    (["git", "clone", "https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/o/r"],
     ["git", "clone", f"https://{REDACTED}@github.com/o/r"]),
    (["env", "GITHUB_TOKEN=abc", "HOME=/root", "python"],
     ["env", f"GITHUB_TOKEN={REDACTED}", "HOME=/root", "python"]),
    (["curl", "-H", "Authorization: Bearer abc.def", "https://h/?api_key=k"],
     ["curl", "-H", f"Authorization: Bearer {REDACTED}", f"https://h/?api_key={REDACTED}"]),
    (["curl", "-u", "alice:pw", "https://h"], ["curl", "-u", f"alice:{REDACTED}", "https://h"]),
    (["curl", "--user=alice:pw"], ["curl", f"--user=alice:{REDACTED}"]),
    (["/usr/bin/mysql", "-uroot", "-pS3cret", "db"], ["/usr/bin/mysql", "-uroot", f"-p{REDACTED}", "db"]),
    (["mysql", "-p", "db"], ["mysql", "-p", "db"]),  # -p alone prompts; db is not secret
    (["sshpass", "-p", "pw", "ssh", "h"], ["sshpass", "-p", REDACTED, "ssh", "h"]),
    (["python", "-p", "8080"], ["python", "-p", "8080"]),  # bare -p is not a password
    (["python", "train.py", "--epochs", "3"], ["python", "train.py", "--epochs", "3"]),
    (["tool", "--password"], ["tool", "--password"]),  # nothing follows
])
def test_argv(argv: list[str], expected: list[str]) -> None:
    assert redact_argv(argv) == expected


def test_argv_bytes_and_empty() -> None:
    assert redact_argv([b"tool", b"--token", b"\xffabc"]) == ["tool", "--token", REDACTED]
    assert redact_argv([]) == [] and redact_argv(None) == []


@pytest.mark.parametrize("value,expected", [
    ("Authorization: Bearer abc", f"Authorization: Bearer {REDACTED}"),
    ("authorization: xyz", f"authorization: {REDACTED}"),
    ("Proxy-Authorization: Basic abc", f"Proxy-Authorization: Basic {REDACTED}"),
])
def test_authorization_headers(value: str, expected: str) -> None:
    assert redact_text(value) == expected


# Gaps found by a hostile review (issue 12): each stayed verbatim before.
@pytest.mark.parametrize("env", [
    {"DB_PW": SECRET}, {"PW": SECRET}, {"SESSION": SECRET}, {"CREDS": f"user:{SECRET}"},
    {"NOTIFY": f"https://hooks.slack.com/services/T0ABC/B0DEF/{SECRET}"},
    {"NOTIFY": f"https://discord.com/api/webhooks/1234567/{SECRET}"},
    {"NOTIFY": f"https://example.webhook.office.com/webhookb2/{SECRET}"},
    {"NOTIFY": f"https://ci.example.org/generic-webhook-trigger/invoke?x=1&token={SECRET}"},
])
def test_review_env_gaps(env: dict) -> None:
    out = redact_env(env)
    assert SECRET not in "".join(out.values()), out


@pytest.mark.parametrize("argv", [
    ["tool", f"--pw={SECRET}"], ["redis-cli", "-P", SECRET], ["tool", f"password:{SECRET}"],
    ["tool", f"token: {SECRET}"],
    ["sh", "-c", f"load --password={SECRET} && curl -u bob:{SECRET} https://h/x"],
    ["bash", "-c", f"psql --password {SECRET} -c 'select 1'"],
    ["sh", "-c", f"run --token '{SECRET}' -v"],
])
def test_review_argv_gaps(argv: list[str]) -> None:
    out = redact_argv(argv)
    assert SECRET not in " ".join(out), out


def test_shell_strings_keep_what_is_not_secret() -> None:
    out = redact_argv(["sh", "-c", f"curl -u bob:{SECRET} -o out.csv https://h/data.csv"])
    assert out[2] == f"curl -u bob:{REDACTED} -o out.csv https://h/data.csv"
    assert redact_argv(["sh", "-c", "cut -d, -f1 sorted.csv | uniq > cities.txt"])[2] == \
        "cut -d, -f1 sorted.csv | uniq > cities.txt"
