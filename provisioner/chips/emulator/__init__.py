"""An ATECC608A emulator that sits *behind* the unmodified cryptoauthlib (kit-bridge HAL).

Pure Python, no ctypes: :mod:`.chip` is the silicon (zones, commands, status bytes),
:mod:`.bus` the wire (wake/idle/sleep, send, receive, busy), :mod:`.jig` the station's
sockets. The driver in :mod:`provisioner.chips` never imports anything else from here.
"""
