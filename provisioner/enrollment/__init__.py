"""Station identity: one-time enrollment tokens made on the line server, station
certificates issued by the HSM CA for a key that never leaves the station PC, their
revocation, and the line server's own identity (the certificate it serves Redis TLS and
signs messages to stations with).

Line server side: :mod:`~provisioner.enrollment.tokens` (``station add``),
:mod:`~provisioner.enrollment.service` (enroll, revoke, line identity),
:mod:`~provisioner.enrollment.certs` (what the certificates contain). Station PC side:
:mod:`~provisioner.enrollment.identity` (``station enroll`` and the files it leaves).
"""
