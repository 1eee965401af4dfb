"""The device registry: a built-in Cloud IoT Core v1-compatible service (``app``, ``store``,
``server``) and the upload client (``client``) that talks to it or to any Cloud IoT v1
endpoint. The service and the client share nothing but the wire format and the token file.
"""
