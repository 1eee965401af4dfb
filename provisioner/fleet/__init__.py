"""Enrollment in the field: devices that never passed the line get an identity certificate
from the HSM CA, in the shape of Thistle's device enrollment (``POST /enroll`` with an
enrollment token, then ``/identity`` with the device token), renew it over mTLS, and are
revoked from one command.

- :mod:`.tokens`: enrollment tokens per registry (create, list, regenerate, expiry, uses)
  and device tokens, stored only as SHA-256.
- :mod:`.identity`: the identity certificate profile.
- :mod:`.service`: enroll, issue (CSR or server-generated key), renew, revoke.
- :mod:`.ratelimit`: requests per minute per client address.

The HTTP side is :mod:`provisioner.api.fleet`; the operator's, ``provisioner fleet``.
"""
