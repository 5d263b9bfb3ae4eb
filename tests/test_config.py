"""Loading and validating the YAML configuration (gateway/config/)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import gateway_plugins.json_format
import gateway_plugins.revicom
import pytest
from pydantic import BaseModel, ConfigDict

import gateway.config.load as config_load
from gateway import hookimpl
from gateway.config import load_config, load_config_text, redact
from gateway.config.redact import MASK, collect_secrets, scrub
from gateway.errors import ConfigError
from gateway.plugin.manager import make_plugin_manager

# -- an inline destination plugin, so option checks do not depend on the built-in destinations


class ProbeDestination:
    """A destination type that only exists in these tests."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        url: str
        timeout: float = 5
        headers: dict[str, str] = {}


class ProbePlugin:
    @hookimpl
    def register_destinations(self, register: Any) -> None:
        register("probe", ProbeDestination)


@pytest.fixture(autouse=True)
def builtin_formats_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load the built-in source formats without other installed entry points, so these tests
    see exactly the components they register (whatever destinations are installed)."""

    def isolated(modules: Any = (), *, extra: Any = (), entry_points: bool = True) -> Any:
        builtins = [gateway_plugins.revicom, gateway_plugins.json_format]
        return make_plugin_manager(modules, entry_points=False, extra=[*builtins, *extra])

    monkeypatch.setattr(config_load, "make_plugin_manager", isolated)


BASE = """
sources:
  revicom:
    path: /callbacks/revicom
    auth:
      basic: {username: gw, password: "${CALLBACK_PASSWORD}"}
destinations:
  archive: {type: probe, url: "http://127.0.0.1:9/archive"}
routes:
  - name: all
    to: [archive]
"""


def load(text: str, env: dict[str, str] | None = None) -> config_load.Loaded:
    return load_config_text(text, {} if env is None else env, extra_plugins=[ProbePlugin()])


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    assert info.value.problems, "a ConfigError must list at least one problem"
    return info.value.problems


def assert_problem(problems: list[str], pattern: str) -> None:
    assert any(re.search(pattern, p) for p in problems), (
        f"no problem matches {pattern!r}; got:\n" + "\n".join(problems)
    )


# -- basics -----------------------------------------------------------------------------------


def test_a_valid_file_loads_with_its_values_and_defaults() -> None:
    loaded = load(BASE, {"CALLBACK_PASSWORD": "s3cret-pw"})
    config = loaded.config
    assert config.sources["revicom"].format == "revicom"
    assert config.sources["revicom"].on_invalid == "quarantine"
    assert config.sources["revicom"].auth.basic.password == "s3cret-pw"
    assert config.destinations["archive"].type == "probe"
    assert config.routes[0].to == ["archive"]
    assert config.delivery.lease == 30.0
    assert config.retry.attempts == 12
    assert config.server.max_body_size == 1024 * 1024
    assert loaded.destination_options["archive"].url == "http://127.0.0.1:9/archive"
    assert loaded.destination_options["archive"].timeout == 5


def test_an_empty_mapping_is_a_valid_default_config() -> None:
    config = load("{}").config
    assert config.sources == {}
    assert config.store == "sqlite:///var/gateway.db"


def test_durations_and_sizes_are_parsed() -> None:
    config = load(
        "server: {max_body_size: 512KiB}\n"
        "retry: {initial: 250ms, max_interval: 10m, max_age: 24h}\n"
        "delivery: {lease: 2m}\n"
    ).config
    assert config.server.max_body_size == 512 * 1024
    assert config.retry.initial == 0.25
    assert config.retry.max_interval == 600.0
    assert config.retry.max_age == 86400.0
    assert config.delivery.lease == 120.0


def test_a_destination_retry_overrides_only_the_keys_it_names() -> None:
    config = load(
        BASE.replace(
            'url: "http://127.0.0.1:9/archive"',
            'url: "http://127.0.0.1:9/archive", retry: {attempts: 3}',
        ),
        {"CALLBACK_PASSWORD": "x"},
    ).config
    assert config.retry_for("archive").attempts == 3
    assert config.retry_for("archive").max_age == config.retry.max_age


# -- interpolation ----------------------------------------------------------------------------


def test_variables_come_from_the_env_parameter_not_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLBACK_PASSWORD", "from-process")
    loaded = load(BASE, {"CALLBACK_PASSWORD": "from-parameter"})
    assert loaded.config.sources["revicom"].auth.basic.password == "from-parameter"
    problems = problems_of(BASE, {})
    assert_problem(problems, "CALLBACK_PASSWORD is not set")


def test_variables_are_replaced_inside_longer_strings() -> None:
    loaded = load('store: "sqlite:///${DIR}/gw-${NAME}.db"', {"DIR": "var", "NAME": "one"})
    assert loaded.config.store == "sqlite:///var/gw-one.db"


def test_a_default_applies_when_the_variable_is_unset_or_empty() -> None:
    text = 'server: {host: "${HOST:-0.0.0.0}"}'
    assert load(text, {}).config.server.host == "0.0.0.0"
    assert load(text, {"HOST": ""}).config.server.host == "0.0.0.0"
    assert load(text, {"HOST": "10.1.2.3"}).config.server.host == "10.1.2.3"


def test_an_empty_default_is_allowed() -> None:
    loaded = load('server: {host: "a${SUFFIX:-}b"}', {})
    assert loaded.config.server.host == "ab"


def test_a_missing_variable_names_the_variable_and_the_key_path() -> None:
    problems = problems_of(BASE, {})
    assert_problem(
        problems,
        r"^sources\.revicom\.auth\.basic\.password: environment variable CALLBACK_PASSWORD"
        r" is not set",
    )


def test_a_missing_variable_inside_a_list_names_the_index() -> None:
    problems = problems_of("plugins: [ok.module, '${PLUGIN_MODULE}']", {})
    assert_problem(problems, r"^plugins\[1\]: environment variable PLUGIN_MODULE is not set")


def test_every_missing_variable_is_reported() -> None:
    problems = problems_of('server: {host: "${A}"}\nstore: "sqlite:///${B}"', {})
    assert_problem(problems, r"^server\.host: .*\bA\b is not set")
    assert_problem(problems, r"^store: .*\bB\b is not set")


def test_double_dollar_brace_is_a_literal() -> None:
    text = BASE.replace("/archive", "/archive?q=$${NOT_A_VAR}")
    loaded = load(text, {"CALLBACK_PASSWORD": "x"})
    assert loaded.destination_options["archive"].url == "http://127.0.0.1:9/archive?q=${NOT_A_VAR}"


def test_keys_are_never_interpolated() -> None:
    problems = problems_of('server: {"${KEY}": 1}', {"KEY": "host"})
    assert_problem(problems, r"^server\.\$\{KEY\}: unknown key")


# -- unknown keys and schema problems ---------------------------------------------------------


def test_an_unknown_top_level_key_suggests_the_closest_one() -> None:
    problems = problems_of("sever: {port: 1}")
    assert problems == ["sever: unknown key (did you mean 'server'?)"]


def test_an_unknown_nested_key_has_its_path_and_a_suggestion() -> None:
    problems = problems_of("sources:\n  revicom: {pathh: /cb}\n")
    assert_problem(problems, r"^sources\.revicom\.pathh: unknown key \(did you mean 'path'\?\)")
    assert_problem(problems, r"^sources\.revicom\.path: required key is missing")


def test_an_unknown_key_in_a_list_item_has_its_index() -> None:
    problems = problems_of(
        BASE.replace("to: [archive]", "to: [archive]\n    stopp: true"), {"CALLBACK_PASSWORD": "x"}
    )
    assert_problem(problems, r"^routes\[0\]\.stopp: unknown key \(did you mean 'stop'\?\)")


def test_an_invalid_duration_says_what_was_found() -> None:
    problems = problems_of("retry: {initial: 5 parsecs}")
    assert_problem(problems, r"^retry\.initial: .*duration.*5 parsecs")


def test_dedupe_retention_below_25_hours_is_refused() -> None:
    assert_problem(problems_of("retention: {dedupe: 1h}"), r"^retention\.dedupe: .*25h")


def test_an_unsupported_store_url_is_refused() -> None:
    assert_problem(problems_of("store: mysql://db/gw"), r"^store: .*sqlite:///")


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    text = """
sever: {port: 1}
retry: {initial: soon}
sources:
  revicom: {path: /cb, format: revicon, auth: {basic: {username: u, password: "${PW}"}}}
destinations:
  archive: {type: prob, url: "http://x"}
  other: {type: probe, urll: "http://x"}
routes:
  - {name: r, to: [archiv]}
  - {name: r, to: [other]}
"""
    problems = problems_of(text, {})
    expected = [
        r"^sever: unknown key \(did you mean 'server'\?\)",
        r"^retry\.initial: .*duration",
        r"^sources\.revicom\.auth\.basic\.password: environment variable PW is not set",
        r"^sources\.revicom\.format: unknown format 'revicon' \(did you mean 'revicom'\?\)",
        r"^destinations\.archive\.type: unknown destination type 'prob'"
        r" \(did you mean 'probe'\?\)",
        r"^destinations\.other\.urll: unknown key \(did you mean 'url'\?\)",
        r"^destinations\.other\.url: required key is missing",
        r"^routes\[0\]\.to\[0\]: no destination named 'archiv' \(did you mean 'archive'\?\)",
        r"^routes\[1\]\.name: 'r' is used by another route",
    ]
    for pattern in expected:
        assert_problem(problems, pattern)
    assert str(ConfigError(problems)).count("\n") == len(problems) - 1


def test_every_problem_is_one_line_starting_with_a_key_path() -> None:
    problems = problems_of("sever: 1\nretry: {attempts: 0}\nroutes: [{to: []}]\n")
    assert len(problems) >= 3
    for line in problems:
        assert "\n" not in line
        assert re.match(r"^[A-Za-z_<][\w.\[\]<>-]*: \S", line), line


# -- YAML syntax and files --------------------------------------------------------------------


def test_a_yaml_syntax_error_keeps_line_and_column() -> None:
    text = "server:\n  host: 127.0.0.1\n  port: [8080\nstore: x\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {}, name="gw.yaml")
    (line,) = info.value.problems
    assert re.match(r"^gw\.yaml:\d+:\d+: YAML syntax error", line), line
    assert line.startswith("gw.yaml:4:"), line


def test_a_yaml_syntax_error_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("a: b\n  c: d\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    (line,) = info.value.problems
    assert line.startswith(f"{path}:2:"), line
    assert "YAML syntax error" in line


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems == [f"{path}: no such file"]
    assert str(info.value) == f"{path}: no such file"


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {})  # a directory cannot be read as a file
    (line,) = info.value.problems
    assert line.startswith(f"{tmp_path}: ")


def test_a_file_loads_and_remembers_its_path(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE, encoding="utf-8")
    loaded = load_config(path, {"CALLBACK_PASSWORD": "x"}, extra_plugins=[ProbePlugin()])
    assert loaded.path == path
    assert loaded.config.sources["revicom"].path == "/callbacks/revicom"


def test_the_top_level_must_be_a_mapping() -> None:
    (line,) = problems_of("- a\n- b\n")
    assert "top level must be a mapping" in line


# -- plugins and components -------------------------------------------------------------------


def test_an_unknown_source_format_suggests_a_registered_one() -> None:
    problems = problems_of("sources:\n  s: {path: /cb, format: jsn}\n")
    assert problems == ["sources.s.format: unknown format 'jsn' (did you mean 'json'?)"]


def test_a_far_off_name_lists_the_valid_choices() -> None:
    problems = problems_of("sources:\n  s: {path: /cb, format: xml}\n")
    assert problems == ["sources.s.format: unknown format 'xml' (expected one of: json, revicom)"]


def test_source_format_options_are_validated_by_the_format() -> None:
    problems = problems_of(
        "sources:\n  s: {path: /cb, format: json, options: {dedupe: {pointr: /id}}}\n"
    )
    assert_problem(problems, r"^sources\.s\.options\.dedupe\.pointr: unknown key")
    loaded = load("sources:\n  s: {path: /cb, format: json, options: {dedupe: {pointer: /id}}}\n")
    assert loaded.source_options["s"].dedupe.pointer == "/id"


def test_an_unknown_destination_type_suggests_a_registered_one() -> None:
    problems = problems_of(BASE.replace("type: probe", "type: prob"), {"CALLBACK_PASSWORD": "x"})
    assert problems == [
        "destinations.archive.type: unknown destination type 'prob' (did you mean 'probe'?)"
    ]


def test_a_destination_without_a_type_is_reported() -> None:
    problems = problems_of("destinations:\n  d: {url: 'http://x'}\n")
    assert_problem(problems, r"^destinations\.d\.type: required key is missing")


def test_destination_options_are_validated_by_the_plugin_model() -> None:
    problems = problems_of("destinations:\n  d: {type: probe, url: 'http://x', timout: 3}\n")
    assert problems == ["destinations.d.timout: unknown key (did you mean 'timeout'?)"]


def test_common_destination_keys_are_not_passed_to_the_plugin_model() -> None:
    loaded = load(
        "destinations:\n  d: {type: probe, url: 'http://x', concurrency: 2, rate_limit: 1/s,"
        " retry: {attempts: 2}, enabled: false}\n"
    )
    assert loaded.config.concurrency_for("d") == 2
    assert loaded.config.destinations["d"].enabled is False
    assert loaded.destination_options["d"].url == "http://x"


def test_a_route_to_a_missing_destination_names_route_and_index() -> None:
    problems = problems_of(
        BASE.replace("to: [archive]", "to: [archive, archve, nowhere-near]"),
        {"CALLBACK_PASSWORD": "x"},
    )
    assert problems == [
        "routes[0].to[1]: no destination named 'archve' (did you mean 'archive'?)",
        "routes[0].to[2]: no destination named 'nowhere-near' (expected one of: archive)",
    ]


def test_a_route_needs_at_least_one_destination() -> None:
    assert_problem(problems_of("routes: [{name: r, to: []}]"), r"^routes\[0\]\.to: ")


def test_a_route_to_a_single_name_is_a_list_of_one() -> None:
    text = BASE.replace("to: [archive]", "to: archive")
    assert load(text, {"CALLBACK_PASSWORD": "x"}).config.routes[0].to == ["archive"]


def test_an_unknown_enricher_in_a_route_is_reported() -> None:
    text = BASE.replace("to: [archive]", "to: [archive]\n    enrich: [no_such_enricher]")
    problems = problems_of(text, {"CALLBACK_PASSWORD": "x"})
    assert_problem(problems, r"^routes\[0\]\.enrich\[0\]: unknown enricher 'no_such_enricher'")


def test_a_plugin_module_that_cannot_be_imported_is_reported_with_its_index() -> None:
    problems = problems_of("plugins: [no_such_module_for_gateway_tests]")
    assert_problem(problems, r"^plugins\[0\]: cannot import 'no_such_module_for_gateway_tests'")


def test_a_destination_timeout_as_long_as_the_lease_is_reported() -> None:
    problems = problems_of("destinations:\n  d: {type: probe, url: 'http://x', timeout: 30}\n")
    assert len(problems) == 1
    assert problems[0].startswith("destinations.d.timeout: 30s must be shorter than delivery.lease")


def test_a_destination_timeout_longer_than_the_lease_is_reported() -> None:
    problems = problems_of(
        "delivery: {lease: 10s}\ndestinations:\n  d: {type: probe, url: 'http://x', timeout: 11}\n"
    )
    assert_problem(problems, r"^destinations\.d\.timeout: .*delivery\.lease \(10s\)")


def test_a_destination_timeout_shorter_than_the_lease_is_fine() -> None:
    loaded = load(
        "delivery: {lease: 2m}\ndestinations:\n  d: {type: probe, url: 'http://x', timeout: 90}\n"
    )
    assert loaded.destination_options["d"].timeout == 90


def test_the_timeout_problem_is_reported_together_with_unrelated_schema_problems() -> None:
    # `check` reports every problem at once: an unknown key elsewhere must not hide this one.
    problems = problems_of(
        "sever: 1\ndestinations:\n  d: {type: probe, url: 'http://x', timeout: 30}\n"
    )
    assert_problem(problems, r"^sever: unknown key")
    assert_problem(problems, r"^destinations\.d\.timeout: 30s must be shorter")


def test_a_destination_type_registered_twice_names_both_plugins() -> None:
    class Twin:
        @hookimpl
        def register_destinations(self, register: Any) -> None:
            register("probe", ProbeDestination)

    with pytest.raises(ConfigError) as info:
        load_config_text("{}", {}, extra_plugins=[ProbePlugin(), Twin()])
    assert_problem(info.value.problems, r"'probe' is registered by both")


# -- secrets ----------------------------------------------------------------------------------


def test_redact_masks_secret_keys_at_any_depth_and_in_any_case() -> None:
    tree = {
        "password": "p1",
        "sources": {"s": {"auth": {"basic": {"username": "gw", "password": "p2"}}}},
        "destinations": {
            "slack": {"type": "slack", "webhook_url": "https://hooks.slack.com/T/B/x"},
            "crm": {
                "type": "webhook",
                "url": "https://crm.example.com/h",
                "Secret": "whsec_abc",
                "headers": {
                    "Authorization": "Bearer t0k",
                    "X-Api-Key": "k3y-0123",
                    "Content-Type": "application/json",
                },
            },
            "bot": {"type": "slack", "TOKEN": "xoxb-1", "channel": "#ops"},
        },
        "list": [{"secret": "in-a-list"}, "plain"],
    }
    out = redact(tree)
    assert out["password"] == MASK
    assert out["sources"]["s"]["auth"]["basic"] == {"username": "gw", "password": MASK}
    assert out["destinations"]["slack"]["webhook_url"] == MASK
    assert out["destinations"]["crm"]["Secret"] == MASK
    assert out["destinations"]["crm"]["headers"] == {  # every header value but plain ones
        "Authorization": MASK,
        "X-Api-Key": MASK,
        "Content-Type": "application/json",
    }
    assert out["destinations"]["crm"]["url"] == "https://crm.example.com/h"
    assert out["destinations"]["bot"] == {"type": "slack", "TOKEN": MASK, "channel": "#ops"}
    assert out["list"] == [{"secret": MASK}, "plain"]
    assert tree["password"] == "p1", "redact must return a copy, not mask in place"
    for secret in (
        "p1",
        "p2",
        "hooks.slack.com",
        "whsec_abc",
        "t0k",
        "k3y-0123",
        "xoxb-1",
        "in-a-list",
    ):
        assert secret not in repr(out)


def test_secrets_include_header_values_and_the_path_of_a_secret_url() -> None:
    found = collect_secrets(
        {
            "destinations": {
                "ops": {
                    "type": "slack",
                    "webhook_url": "https://hooks.slack.com/services/T0AB/B0CD/aSecretToken12345678",
                },
                "crm": {
                    "type": "webhook",
                    "url": "https://crm.example.com/hooks",
                    "headers": {"X-Api-Key": "key-0123456789", "Content-Type": "application/json"},
                },
            }
        }
    )
    assert "/services/T0AB/B0CD/aSecretToken12345678" in found  # echoed in a request line
    assert "aSecretToken12345678" in found
    assert "key-0123456789" in found
    assert "application/json" not in found and "/hooks" not in found
    echoed = "HTTP 500: POST /services/T0AB/B0CD/aSecretToken12345678 x-api-key: key-0123456789"
    assert scrub(echoed, found) == "HTTP 500: POST *** x-api-key: ***"


def test_redact_masks_secret_values_that_are_not_strings() -> None:
    assert redact({"token": 12345, "secret": {"nested": "x"}}) == {"token": MASK, "secret": MASK}


def test_redact_masks_url_userinfo_passwords_anywhere() -> None:
    out = redact(
        {
            "store": "redis://:hunter2@localhost:6379/0",
            "destinations": {"w": {"url": "https://user:pa55@crm.example.com/hook"}},
            "note": "see http://a:b@host and https://c:d@other/path",
        }
    )
    assert out["store"] == "redis://:***@localhost:6379/0"
    assert out["destinations"]["w"]["url"] == "https://user:***@crm.example.com/hook"
    assert out["note"] == "see http://a:***@host and https://c:***@other/path"


def test_redact_leaves_urls_without_passwords_alone() -> None:
    urls = ["https://crm.example.com:8443/hook?a=b", "https://user@host/x", "sqlite:///var/gw.db"]
    assert redact(urls) == urls


def test_collect_secrets_finds_every_secret_value() -> None:
    tree = {
        "sources": {"s": {"auth": {"basic": {"username": "gw", "password": "pw-1"}}}},
        "destinations": {
            "w": {
                "headers": {"AUTHORIZATION": "Bearer abc"},
                "secret": "whsec_x",
                "token": "",
                "webhook_url": None,
            }
        },
        "others": [{"Password": "pw-2"}],
    }
    basic = base64.b64encode(b"gw:pw-1").decode()  # what HTTP Basic sends; peers echo it
    assert collect_secrets(tree) == {"pw-1", basic, "Bearer abc", "whsec_x", "pw-2"}


def test_collect_secrets_finds_url_passwords_and_their_basic_form() -> None:
    tree = {"destinations": {"w": {"url": "https://crm:p%40ss@crm.example.com/hooks"}}}
    assert collect_secrets(tree) == {"p@ss", base64.b64encode(b"crm:p@ss").decode()}


def test_a_loaded_config_knows_its_interpolated_secrets() -> None:
    loaded = load(BASE, {"CALLBACK_PASSWORD": "from-env-secret"})
    assert "from-env-secret" in loaded.secrets
    assert "gw" not in loaded.secrets


def test_scrub_masks_known_secrets_and_url_passwords() -> None:
    text = "POST https://u:pw9@crm/h failed: 401 token=xoxb-secret-1 (user gw)"
    out = scrub(text, {"xoxb-secret-1", "gw"})
    assert "xoxb-secret-1" not in out
    assert "pw9" not in out
    assert out == f"POST https://u:{MASK}@crm/h failed: 401 token={MASK} (user gw)"


def test_scrub_ignores_secrets_too_short_to_mask_safely() -> None:
    assert scrub("a b c", {"a"}) == "a b c"
