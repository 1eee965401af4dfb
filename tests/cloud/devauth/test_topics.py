"""Cloud IoT's topic rules and client id format."""

from __future__ import annotations

from provisioner.cloud.devauth import topics


def test_own_topics() -> None:
    assert topics.own_publish("d1") == [
        "/devices/d1/events",
        "/devices/d1/events/#",
        "/devices/d1/state",
    ]
    assert topics.own_subscribe("d1") == ["/devices/d1/config", "/devices/d1/commands/#"]
    assert "/devices/+/attach" in topics.own_publish("gw", gateway=True)
    assert "/devices/gw/errors" in topics.own_subscribe("gw", gateway=True)


def test_parse_topic() -> None:
    assert topics.parse_topic("/devices/d1/events") == topics.TopicParts("d1", "events", "")
    assert topics.parse_topic("/devices/d1/events/a/b") == topics.TopicParts("d1", "events", "a/b")
    assert topics.parse_topic("/devices/d1/commands/#") == topics.TopicParts("d1", "commands", "#")
    for bad in (
        "devices/d1/events",
        "/devices/d1",
        "/devices/d1/other",
        "/devices/d1/state/x",
        "/devices/d1/events/",
        "/devices/+/config",
        "/devices//state",
    ):
        assert topics.parse_topic(bad) is None, bad


def test_parse_client_id() -> None:
    assert topics.parse_client_id("projects/p/locations/l/registries/r/devices/d") == (
        "p",
        "l",
        "r",
        "d",
    )
    assert topics.parse_client_id("projects/p/locations/l/registries/r/devices/d/x") is None
    assert topics.parse_client_id("projects/p/locations/l/registries/r") is None


def test_matches() -> None:
    assert topics.matches("/devices/d/events/#", "/devices/d/events")
    assert topics.matches("/devices/d/events/#", "/devices/d/events/a/b")
    assert not topics.matches("/devices/d/events/#", "/devices/e/events")
    assert topics.matches("/devices/+/attach", "/devices/child/attach")
    assert not topics.matches("/devices/+/attach", "/devices/child/detach")
    assert not topics.matches("/devices/d/state", "/devices/d/state/x")
