"""Auth-file parsing and credential lookup (pypod.images.auth): pure, no root, no network."""

import base64
import json

import pytest

from pypod.errors import UsageError
from pypod.images.auth import credentials_for, default_auth_paths, load_auths, normalize_key


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.fixture
def no_default_files(monkeypatch, tmp_path):
    """Point every default location somewhere empty (except /etc/pypod/auth.json, checked below)."""
    monkeypatch.delenv("PYPOD_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_auth_and_username_password_forms(tmp_path):
    p = write(tmp_path / "auth.json", {"auths": {
        "reg.example.com": {"auth": b64("alice:s3cr:et")},
        "other.example.com:5000": {"username": "bob", "password": "pw"},
    }})
    assert load_auths(p) == {"reg.example.com": ("alice", "s3cr:et"),
                             "other.example.com:5000": ("bob", "pw")}


def test_docker_legacy_keys_map_to_docker_io(tmp_path):
    p = write(tmp_path / "config.json", {"auths": {"https://index.docker.io/v1/": {"auth": b64("u:p")}}})
    auths = load_auths(p)
    assert auths == {"docker.io": ("u", "p")}
    # the host actually contacted for docker.io is registry-1.docker.io
    assert credentials_for(auths, "registry-1.docker.io", "library/alpine") == ("u", "p")
    assert credentials_for(auths, "docker.io", "library/alpine") == ("u", "p")


@pytest.mark.parametrize("key,normal", [
    ("https://index.docker.io/v1/", "docker.io"),
    ("http://registry-1.docker.io/v2/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("https://quay.io", "quay.io"),
    ("https://Quay.IO/v1/", "quay.io"),
    ("localhost:5000/", "localhost:5000"),
    ("reg.io/team/app/", "reg.io/team/app"),
])
def test_normalize_key(key, normal):
    assert normalize_key(key) == normal


def test_most_specific_key_wins():
    auths = {"reg.io": ("host", "1"), "reg.io/team": ("team", "2"), "reg.io/team/app": ("app", "3")}
    assert credentials_for(auths, "reg.io", "team/app") == ("app", "3")
    assert credentials_for(auths, "reg.io", "team/app/sub") == ("app", "3")
    assert credentials_for(auths, "reg.io", "team/other") == ("team", "2")
    assert credentials_for(auths, "reg.io", "teammate/app") == ("host", "1")  # components, not string prefixes
    assert credentials_for(auths, "reg.io", "library/busybox") == ("host", "1")
    assert credentials_for(auths, "other.io", "team/app") is None
    assert credentials_for(auths, "reg.io:5000", "team/app") is None  # the port is part of the host
    assert credentials_for({}, "reg.io", "x") is None


def test_lookup_normalizes_unnormalized_keys():
    assert credentials_for({"https://Reg.IO/v1/": ("u", "p")}, "reg.io", "a/b") == ("u", "p")


def test_empty_entries_are_skipped(tmp_path):
    p = write(tmp_path / "config.json", {"auths": {"reg.io": {}, "ghcr.io": {"auth": ""}},
                                         "credsStore": "desktop"})
    assert load_auths(p) == {}


def test_missing_auths_section_is_empty(tmp_path):
    assert load_auths(write(tmp_path / "a.json", {})) == {}


@pytest.mark.parametrize("doc,needle", [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ({"auths": []}, '"auths" must be an object'),
    ({"auths": {"reg.io": "x"}}, "'reg.io' must be an object"),
    ({"auths": {"reg.io": {"auth": "%%%"}}}, "not base64"),
    ({"auths": {"reg.io": {"auth": b64("nocolon")}}}, "not base64 of user:password"),
    ({"auths": {"reg.io": {"username": "u"}}}, "username and password"),
])
def test_malformed_files_name_the_file(tmp_path, doc, needle):
    p = write(tmp_path / "bad.json", doc)
    with pytest.raises(UsageError) as ei:
        load_auths(p)
    assert needle in str(ei.value) and str(p) in str(ei.value)
    assert "\n" not in str(ei.value)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_auths(tmp_path / "nope.json")


def test_default_search_order_and_merge(no_default_files, monkeypatch):
    tmp = no_default_files
    env_file = write(tmp / "env.json", {"auths": {"a.io": {"auth": b64("env:1")}}})
    write(tmp / "run" / "containers" / "auth.json", {"auths": {"a.io": {"auth": b64("xdg:2")},
                                                               "b.io": {"auth": b64("xdg:3")}}})
    write(tmp / "home" / ".docker" / "config.json", {"auths": {"b.io": {"auth": b64("docker:4")},
                                                               "https://index.docker.io/v1/": {"auth": b64("hub:5")}}})
    monkeypatch.setenv("PYPOD_AUTH_FILE", str(env_file))
    paths = default_auth_paths()
    assert paths[0] == env_file
    assert paths[-2:] == [tmp / "run" / "containers" / "auth.json", tmp / "home" / ".docker" / "config.json"]
    auths = {k: v for k, v in load_auths(None).items()}
    # /etc/pypod/auth.json may exist on the machine; it sits between env and XDG, so only check ours
    assert auths["a.io"] == ("env", "1")        # earlier file wins
    if not (paths[1].is_file() and "b.io" in load_auths(paths[1])):
        assert auths["b.io"] == ("xdg", "3")
    assert auths["docker.io"] == ("hub", "5")


def test_default_search_without_any_file(no_default_files):
    paths = default_auth_paths()
    if not any(p.is_file() for p in paths):
        assert load_auths(None) == {}


def test_xdg_runtime_dir_unset(no_default_files, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert all("containers" not in str(p) for p in default_auth_paths())
