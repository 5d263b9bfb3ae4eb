"""The plugin chain: global hooks, route matching, per-route enrichers and filters, fan-out."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from pydantic import BaseModel

from gateway import hookimpl
from gateway.config import load_config_text
from gateway.errors import ConfigError, PluginError
from gateway.routing.chain import Chain

META = {"event_id": "ev-1", "source": "revicom", "received_at": 1602874300.0}
UNDELIVERED = {
    "message_uuid": "m-1",
    "channel_type": "SMS",
    "callback_event": "delivered",
    "status": "undelivered",
    "status_time": "2020-10-16T18:51:13Z",
    "error_code": 6969,
}
INBOUND = {
    "message_uuid": "m-2",
    "channel_type": "WHATSAPP",
    "callback_event": "inbound_sent",
    "status": "inbound_sent",
    "status_time": "2020-10-16T18:51:13Z",
    "item": {"contentType": "text"},
}


class FixedClock:
    def now(self) -> float:
        return 1602874300.0

    async def sleep(self, seconds: float) -> None:
        pass


def load(body: str, *, extra: tuple[object, ...] = ()) -> Any:
    text = textwrap.dedent("""
        destinations:
          a: {type: file, path: a.jsonl}
          b: {type: file, path: b.jsonl}
          c: {type: file, path: c.jsonl}
    """) + textwrap.dedent(body)
    return load_config_text(text, env={}, extra_plugins=extra)


def chain(body: str, *, extra: tuple[object, ...] = ()) -> Chain:
    return Chain(load(body, extra=extra), None, FixedClock())


def dests(decision: Any) -> list[tuple[str, str]]:
    return [(t.route, t.destination) for t in decision.targets]


# -- small inline plugins --------------------------------------------------------------------
class Options(BaseModel):
    pass


class Tagger:
    """enrich_event: adds team=ops."""

    __name__ = "tagger"

    @hookimpl(tryfirst=True)
    def enrich_event(self, event, meta):
        return {"team": "ops"}


class AsyncTagger:
    __name__ = "async-tagger"

    @hookimpl
    async def enrich_event(self, event, meta):
        return {"seen_team": event.get("team"), "async": True}


class Dropper:
    __name__ = "dropper"

    @hookimpl
    def filter_event(self, event, meta):
        return False if event.get("channel_type") == "TEST" else None


class Components:
    """Registers an enricher, two filters and a broken enricher."""

    __name__ = "components"

    class Upper:
        Options = Options

        def __init__(self, options):
            pass

        async def enrich(self, event, meta):
            return {"upper": str(event.get("status", "")).upper(), "route": meta["route"]}

    class SeesUpper:
        Options = Options

        def __init__(self, options):
            pass

        def enrich(self, event, meta):
            return {"saw_upper": event.get("upper")}

    class NoSms:
        Options = Options

        def keep(self, event, meta):  # no __init__: constructed without options
            return "SMS is not wanted here" if event.get("channel_type") == "SMS" else True

    class Never:
        Options = Options

        def __init__(self, options):
            pass

        async def keep(self, event, meta):
            return False

    class Broken:
        Options = Options

        def __init__(self, options):
            pass

        def enrich(self, event, meta):
            raise RuntimeError("lookup service down")

    class NotJson:
        Options = Options

        def __init__(self, options):
            pass

        def enrich(self, event, meta):
            return {"when": object()}

    @hookimpl
    def register_enrichers(self, register):
        register("upper", self.Upper)
        register("sees_upper", self.SeesUpper)
        register("broken", self.Broken)
        register("not_json", self.NotJson)

    @hookimpl
    def register_filters(self, register):
        register("no_sms", self.NoSms)
        register("never", self.Never)


# -- matching and fan-out --------------------------------------------------------------------
async def test_every_matching_route_fires_with_one_target_per_destination():
    c = chain("""
        routes:
          - name: failures
            when: event.status in ["undelivered", "unsent"]
            to: [a, b]
          - name: inbound
            match: {callback_event: inbound_sent}
            to: c
          - name: archive
            to: c
    """)
    d = await c.evaluate(UNDELIVERED, META)
    assert d.state == "routed"
    assert dests(d) == [("failures", "a"), ("failures", "b"), ("archive", "c")]
    d = await c.evaluate(INBOUND, META)
    assert dests(d) == [("inbound", "c"), ("archive", "c")]


async def test_stop_ends_evaluation_after_a_matching_route():
    c = chain("""
        routes:
          - {name: inbound, match: {callback_event: inbound_sent}, to: a, stop: true}
          - {name: rest, to: b}
    """)
    assert dests(await c.evaluate(INBOUND, META)) == [("inbound", "a")]
    assert dests(await c.evaluate(UNDELIVERED, META)) == [("rest", "b")]


async def test_unnamed_routes_are_named_by_position():
    c = chain("""
        routes:
          - {match: {status: sent}, to: a}
          - {to: b}
    """)
    assert dests(await c.evaluate(UNDELIVERED, META)) == [("route-1", "b")]


async def test_an_event_no_route_matches_is_unmatched_with_a_reason():
    c = chain("""
        routes:
          - {name: sent, match: {status: sent}, to: a}
    """)
    d = await c.evaluate(UNDELIVERED, META)
    assert (d.state, d.targets) == ("unmatched", [])
    assert d.reason == "none of 1 route(s) matched"
    assert d.trace[-1].detail == "status is 'undelivered', wanted 'sent'"


async def test_without_routes_every_event_is_unmatched():
    d = await chain("routes: []").evaluate(UNDELIVERED, META)
    assert (d.state, d.reason) == ("unmatched", "no routes are configured")


async def test_operators_and_dotted_paths_in_routes():
    c = chain("""
        routes:
          - {name: high, match: {error_code: {gte: 6000}}, to: a}
          - {name: text, match: {item.contentType: text, channel_type: {glob: "WHATS*"}}, to: b}
    """)
    assert dests(await c.evaluate(UNDELIVERED, META)) == [("high", "a")]
    assert dests(await c.evaluate(INBOUND, META)) == [("text", "b")]


async def test_the_same_destination_twice_in_a_route_is_one_target():
    c = chain("routes: [{to: [a, a, b]}]")
    assert dests(await c.evaluate(INBOUND, META)) == [("route-0", "a"), ("route-0", "b")]


async def test_a_non_object_element_is_routed_by_routes_without_conditions():
    c = chain("""
        routes:
          - {match: {status: sent}, to: a}
          - {to: b}
    """)
    assert dests(await c.evaluate(42, META)) == [("route-1", "b")]  # type: ignore[arg-type]


# -- enrichment ------------------------------------------------------------------------------
async def test_enrich_event_hooks_feed_matching_and_every_target():
    c = chain(
        """
        routes:
          - {name: ops, when: 'event.team == "ops"', to: a}
          - {name: by-match, match: {team: ops, async: true}, to: b}
    """,
        extra=(Tagger(), AsyncTagger()),
    )
    d = await c.evaluate(UNDELIVERED, META)
    assert dests(d) == [("ops", "a"), ("by-match", "b")]
    # Each enrich_event hook sees what the hooks before it (pluggy order) added.
    assert d.enrichment == {"team": "ops", "seen_team": "ops", "async": True}
    assert all(t.enrichment == d.enrichment for t in d.targets)


async def test_route_enrichers_apply_to_their_route_only_and_see_earlier_ones():
    c = chain(
        """
        routes:
          - {name: one, enrich: [upper, sees_upper], to: a}
          - {name: two, to: b}
    """,
        extra=(Components(),),
    )
    d = await c.evaluate(UNDELIVERED, META)
    one, two = d.targets
    assert one.enrichment == {"upper": "UNDELIVERED", "route": "one", "saw_upper": "UNDELIVERED"}
    assert two.enrichment == {}


async def test_configured_enricher_instances_take_their_options():
    c = chain("""
        enrichers:
          team: {type: fields, values: {team: payments, env: prod}}
        routes:
          - {enrich: [team, status_text], to: a}
    """)
    (t,) = (await c.evaluate(UNDELIVERED, META)).targets
    assert t.enrichment == {
        "team": "payments",
        "env": "prod",
        "status_text": "Not delivered within the message lifetime",
    }


# -- filters ---------------------------------------------------------------------------------
async def test_a_route_filter_drops_the_event_for_that_route_only_with_its_reason():
    c = chain(
        """
        routes:
          - {name: apps, filter: [no_sms], to: a}
          - {name: all, to: b}
    """,
        extra=(Components(),),
    )
    d = await c.evaluate(UNDELIVERED, META)
    assert d.state == "routed"
    assert dests(d) == [("all", "b")]
    assert d.reason == "route 'apps': filter 'no_sms': SMS is not wanted here"
    assert dests(await c.evaluate(INBOUND, META)) == [("apps", "a"), ("all", "b")]


async def test_when_every_matching_route_drops_it_the_event_is_filtered():
    c = chain(
        """
        routes:
          - {name: one, filter: [never], to: a}
          - {name: two, filter: no_sms, to: b}
    """,
        extra=(Components(),),
    )
    d = await c.evaluate(UNDELIVERED, META)
    assert d.state == "filtered"
    assert d.reason == (
        "route 'one': filter 'never': returned False; "
        "route 'two': filter 'no_sms': SMS is not wanted here"
    )


async def test_stop_applies_when_the_route_matched_even_if_its_filter_dropped_the_event():
    c = chain(
        """
        routes:
          - {name: one, filter: [never], to: a, stop: true}
          - {name: two, to: b}
    """,
        extra=(Components(),),
    )
    d = await c.evaluate(UNDELIVERED, META)
    assert (d.state, d.targets) == ("filtered", [])


async def test_a_filter_event_hook_returning_false_drops_the_event_before_routing():
    c = chain("routes: [{to: a}]", extra=(Dropper(),))
    d = await c.evaluate({**UNDELIVERED, "channel_type": "TEST"}, META)
    assert (d.state, d.targets) == ("filtered", [])
    assert d.reason == "dropped by filter_event of plugin 'dropper'"
    assert (await c.evaluate(UNDELIVERED, META)).state == "routed"


# -- failures --------------------------------------------------------------------------------
async def test_a_raising_enrich_event_hook_is_a_plugin_error_naming_the_plugin():
    class Raising:
        __name__ = "flaky"

        @hookimpl
        async def enrich_event(self, event, meta):
            raise ConnectionError("crm down")

    c = chain("routes: [{to: a}]", extra=(Raising(),))
    with pytest.raises(PluginError) as e:
        await c.evaluate(UNDELIVERED, META)
    assert e.value.plugin == "flaky"
    assert "crm down" in str(e.value)


async def test_a_raising_filter_event_hook_is_a_plugin_error():
    class Raising:
        __name__ = "bad-filter"

        @hookimpl
        def filter_event(self, event, meta):
            raise KeyError("x")

    with pytest.raises(PluginError, match="bad-filter"):
        await chain("routes: [{to: a}]", extra=(Raising(),)).evaluate(UNDELIVERED, META)


async def test_a_raising_enricher_names_itself_and_its_plugin():
    c = chain("routes: [{enrich: [broken], to: a}]", extra=(Components(),))
    with pytest.raises(PluginError) as e:
        await c.evaluate(UNDELIVERED, META)
    assert e.value.plugin == "broken (components)"
    assert "lookup service down" in str(e.value)


async def test_enrichment_that_is_not_json_is_a_plugin_error():
    c = chain("routes: [{enrich: [not_json], to: a}]", extra=(Components(),))
    with pytest.raises(PluginError, match="not JSON-serializable"):
        await c.evaluate(UNDELIVERED, META)


async def test_enrich_event_returning_a_non_dict_is_a_plugin_error():
    class Wrong:
        __name__ = "wrong"

        @hookimpl
        def enrich_event(self, event, meta):
            return ["team"]

    with pytest.raises(PluginError, match="not a dict"):
        await chain("routes: [{to: a}]", extra=(Wrong(),)).evaluate(UNDELIVERED, META)


async def test_hooks_cannot_change_the_event_for_later_steps():
    class Mutator:
        __name__ = "mutator"

        @hookimpl
        def filter_event(self, event, meta):
            event["status"] = "sent"

    event = dict(UNDELIVERED)
    c = chain("routes: [{match: {status: undelivered}, to: a}]", extra=(Mutator(),))
    assert dests(await c.evaluate(event, META)) == [("route-0", "a")]
    assert event == UNDELIVERED


# -- configuration ---------------------------------------------------------------------------
def test_bad_match_and_when_are_configuration_errors_with_key_paths():
    with pytest.raises(ConfigError) as e:
        load("""
            routes:
              - {match: {error_code: {gtee: 6000}}, to: a}
              - {when: "event.status ==", to: a}
              - {to: a, orderin: false}
        """)
    problems = e.value.problems
    assert any(
        p.startswith("routes[0].match: error_code: unknown operator 'gtee'")
        and "did you mean 'gte'" in p
        for p in problems
    ), problems
    assert any(p.startswith("routes[1].when: invalid expression") for p in problems), problems
    assert any(
        p.startswith("routes[2].orderin: unknown key") and "ordering" in p for p in problems
    ), problems


def test_unknown_enricher_or_filter_names_are_configuration_errors():
    with pytest.raises(ConfigError) as e:
        load("routes: [{enrich: [status_txt], filter: [orderng], to: a}]")
    text = str(e.value)
    assert (
        "routes[0].enrich[0]: unknown enricher 'status_txt' (did you mean 'status_text'?)"
    ) in text
    assert "routes[0].filter[0]: unknown filter 'orderng' (did you mean 'ordering'?)" in text


def test_a_component_that_fails_to_start_is_a_configuration_error():
    class Explodes:
        __name__ = "explodes"

        class Bomb:
            Options = Options

            def __init__(self, options):
                raise RuntimeError("no licence key")

        @hookimpl
        def register_enrichers(self, register):
            register("bomb", self.Bomb)

    with pytest.raises(ConfigError, match=r"enrichers\.bomb: bomb .* no licence key"):
        chain("routes: [{enrich: [bomb], to: a}]", extra=(Explodes(),))
