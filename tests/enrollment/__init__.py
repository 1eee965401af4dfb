"""Station identity: enrollment tokens, station and line certificates, revocation."""
