"""The factory CA: ceremony (keys in the token) and device-certificate issuance."""
