"""The config file: where it is read from, in which order, its [classify]
globs, and one-line errors for every way it can be wrong (issue 14)."""

from __future__ import annotations

import os

import pytest

from provtrace.tracer import config as C


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No real /etc or home config: every location points into tmp_path."""
    monkeypatch.setenv("PROVTRACE_SYSTEM_CONFIG", str(tmp_path / "etc" / "config.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PROVTRACE_CONFIG", raising=False)
    return tmp_path


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("glob,path,hit", [
    ("/data/scratch/**", "/data/scratch/a.csv", True),
    ("/data/scratch/**", "/data/scratch/x/y/z.bin", True),
    ("/data/scratch/**", "/data/scratchy/a.csv", False),
    ("/data/scratch/**", "/other/data/scratch/a", False),  # anchored at the root
    ("**/*.parquet", "/a.parquet", True),
    ("**/*.parquet", "/home/u/p/t.parquet", True),
    ("**/*.parquet", "/home/u/p/t.parquet.bak", False),
    ("/home/*/logs/*.log", "/home/u/logs/run.log", True),
    ("/home/*/logs/*.log", "/home/u/v/logs/run.log", False),  # '*' stays in one component
    ("/a/**/b", "/a/b", True),  # '**' is zero components too
    ("/a/**/b", "/a/x/y/b", True),
    ("/a/**/b", "/a/xb", False),
    ("/r/run-?.txt", "/r/run-1.txt", True),
    ("/r/run-?.txt", "/r/run-10.txt", False),
    ("/r/[ab]*.csv", "/r/b1.csv", True),
    ("/r/[!ab]*.csv", "/r/b1.csv", False),
    ("/r/[!ab]*.csv", "/r/c1.csv", True),
    ("/r/[^]x", "/r/^x", True),  # '^' in a set is literal, as in fnmatch
    ("/r/a+b(1).csv", "/r/a+b(1).csv", True),  # regex characters are literal
    ("/r/[x", "/r/[x", True),  # an unclosed '[' is literal
])
def test_glob(glob, path, hit):
    assert bool(C.glob_regex(glob).fullmatch(path)) is hit


def test_glob_home_and_relative():
    assert C.glob_regex("~/scratch/**").fullmatch(os.path.expanduser("~") + "/scratch/f")
    for bad in ("*.csv", "data/*.csv", "**.csv"):
        with pytest.raises(ValueError):
            C.glob_regex(bad)
    assert C.glob_regex("**").fullmatch("/any/thing")


def test_no_files_no_rules(env):
    cfg = C.load()
    assert cfg.rules == [] and cfg.kind_of("/x.csv") is None and cfg.effective("/x.csv", "data") == "data"


def test_system_then_user_later_wins(env):
    write(env / "etc" / "config.toml", '[classify]\n"/d/**" = "temp"\n"/d/keep/**" = "library"\n')
    write(env / "xdg" / "provtrace" / "config.toml", '[classify]\n"/d/keep/**" = "data"\n')
    cfg = C.load()
    assert cfg.kind_of("/d/x") == "temp"
    assert cfg.kind_of("/d/keep/x") == "data"  # the user's rule overrides the system's
    assert cfg.kind_of("/e/x") is None


def test_within_a_file_the_last_matching_rule_wins(env):
    write(env / "xdg" / "provtrace" / "config.toml",
          '[classify]\n"/d/**" = "temp"\n"**/*.parquet" = "data"\n')
    cfg = C.load()
    assert cfg.kind_of("/d/t.parquet") == "data" and cfg.kind_of("/d/t.csv") == "temp"


def test_xdg_default_is_dot_config(env, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(env / "home"))
    write(env / "home" / ".config" / "provtrace" / "config.toml", '[classify]\n"/h/**" = "system"\n')
    assert C.load().kind_of("/h/x") == "system"


def test_provtrace_config_replaces_the_user_file(env, monkeypatch):
    write(env / "etc" / "config.toml", '[classify]\n"/s/**" = "temp"\n')
    write(env / "xdg" / "provtrace" / "config.toml", '[classify]\n"/u/**" = "temp"\n')
    mine = write(env / "mine.toml", '[classify]\n"/m/**" = "library"\n')
    monkeypatch.setenv("PROVTRACE_CONFIG", str(mine))
    cfg = C.load()
    assert C.config_files() == [str(env / "etc" / "config.toml"), str(mine)]
    assert (cfg.kind_of("/s/x"), cfg.kind_of("/u/x"), cfg.kind_of("/m/x")) == ("temp", None, "library")


def test_a_missing_file_is_an_error_only_when_named(env, monkeypatch):
    assert C.load().rules == []  # neither the system nor the user file exists
    monkeypatch.setenv("PROVTRACE_CONFIG", str(env / "typo.toml"))
    with pytest.raises(C.ConfigError, match=r"typo.toml: no such file \(named by PROVTRACE_CONFIG\)"):
        C.load()


def test_other_tables_are_left_alone(env):
    write(env / "xdg" / "provtrace" / "config.toml", '[fleet]\nhost_id = "h1"\n')
    assert C.load().rules == []


@pytest.mark.parametrize("text,words", [
    ('[classify\n', ["bad TOML"]),
    ('[classify]\n"/d/**" = "junk"\n', ["'/d/**'", "unknown kind 'junk'", "data, library, system, temp"]),
    ('[classify]\n"/d/**" = 3\n', ["'/d/**'", "unknown kind 3"]),
    ('[classify]\n"/d/**" = ["temp"]\n', ["'/d/**'", "unknown kind"]),
    ('[classify]\nfoo.csv = "data"\n', ["'foo'", "quote a glob"]),
    ('[classify]\n"*.csv" = "data"\n', ["'*.csv'", "must start with '/', '~/' or '**/'"]),
    ('classify = "temp"\n', ["[classify] must be a table"]),
])
def test_bad_config_is_one_line_naming_file_and_key(env, text, words):
    path = write(env / "xdg" / "provtrace" / "config.toml", text)
    with pytest.raises(C.ConfigError) as e:
        C.load()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"config {path}: ")
    for w in words:
        assert w in msg


def test_unreadable_and_binary_config(env):
    (env / "xdg" / "provtrace" / "config.toml").mkdir(parents=True)  # unreadable, even for root
    with pytest.raises(C.ConfigError, match="cannot read"):
        C.load()
    (env / "xdg" / "provtrace" / "config.toml").rmdir()
    (env / "xdg" / "provtrace" / "config.toml").write_bytes(b'[classify]\n"/\xff" = "data"\n')
    with pytest.raises(C.ConfigError, match="config .*: (not UTF-8|bad TOML)"):
        C.load()


def test_lenient_load_warns_and_ignores(env):
    write(env / "etc" / "config.toml", '[classify]\n"/d/**" = "nope"\n')
    said: list[str] = []
    assert C.load_lenient(said.append).rules == []
    assert len(said) == 1 and said[0].endswith("; config ignored")
