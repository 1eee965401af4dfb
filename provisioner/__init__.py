"""Factory provisioning of ATECC608A/B secure elements.

The flow of one device is in :mod:`provisioner.pipeline`; the seams it talks through are in
:mod:`provisioner.ports`; every user-facing error is in :mod:`provisioner.errors`.
"""

__version__ = "0.1.0"
