"""PKCS#11 access: modules, tokens, keys and a cryptography-compatible signer.

Knows PKCS#11 and nothing about batches, chips or devices. Nothing here touches a PKCS#11
module at import time: a Celery prefork parent must not load one (its state does not
survive fork), so modules are opened explicitly, in the process that uses them.
"""
