"""The device plane of the built-in cloud: MQTT sessions, topic and gateway rules, commands
and configs for connected devices (:mod:`.service`), and the ``/bridge/v1`` HTTP contract the
broker plugin calls (:mod:`.routes`)."""
