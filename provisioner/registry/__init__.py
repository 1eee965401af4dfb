"""The device registry: a built-in Cloud IoT Core v1-compatible service, and the upload
client that any Cloud IoT v1 endpoint (ours, ClearBlade's) accepts."""
