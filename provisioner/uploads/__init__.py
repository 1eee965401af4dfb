"""The line's uploaders: certificates leave the line server for a device registry.

``backends`` picks the configured kind (the built-in registry or any Cloud IoT v1 endpoint
through ``client``, ClearBlade through ``clearblade_backend``, AWS IoT through ``aws``);
``forwarder`` stores and forwards uploads, ``ratelimit`` paces them, ``blocking`` carries
revocations to the registry and ``manifest`` writes Microchip-format manifests for customers
who register devices themselves.

These modules talk to a registry only over its wire protocol: they never import the built-in
cloud (:mod:`provisioner.cloud`) beyond reading the upload token file its server creates.
"""
