"""The built-in cloud: a Cloud IoT Core v1-compatible device registry and its device plane.

The registry's HTTP API (``app``, ``resources``, ``service``, ``store``, ``clearblade``),
run as a process by ``server``. It stands in for a cloud service and shares nothing with the
line but the wire format and the upload token file (``tokens``); the line's uploaders live in
:mod:`provisioner.uploads`.
"""
