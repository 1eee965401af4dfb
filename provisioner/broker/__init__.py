"""The line broker: Redis TLS + ACL users, namespaces, Celery over it."""
