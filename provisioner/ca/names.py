"""Subject alternative names from the names an admin configures (a server certificate's
SANs): one parser for the line server's certificate and the MQTT bridge's."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from cryptography import x509

from provisioner.errors import InvalidInputError

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def general_names(names: Sequence[str], *, empty: str, where: str = "") -> list[x509.GeneralName]:
    """SAN entries: an IP address for what parses as one, else a DNS name (lower-cased,
    without a trailing dot), without repeats, in order. ``empty`` is the error when there is
    no name; ``where`` prefixes a bad name's error (the setting it came from)."""
    if not names:
        raise InvalidInputError(empty)
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        labels = name.rstrip(".").split(".")
        if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise InvalidInputError(
                f"{where}{name!r} is neither an IP address nor a DNS name (letters, digits, "
                "'-', dots between labels)"
            )
        out.append(x509.DNSName(name.rstrip(".").lower()))
    return list(dict.fromkeys(out))
