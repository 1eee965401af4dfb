"""An ATECC608A / ATECC608B emulator that sits *behind* the unmodified cryptoauthlib
(kit-bridge HAL); the developer's guide is docs/emulator.md.

Pure Python, no ctypes in the silicon: :mod:`.chip` holds the zones and volatile registers
and dispatches each command packet to its family's module under :mod:`.commands` (status
bytes and packet shapes in :mod:`.wire`, TempKey in :mod:`.tempkey`, IO protection in
:mod:`.ioprot`, execution times in :mod:`.timing`, SelfTest's checks in :mod:`.selftest`);
:mod:`.factory` is a factory-fresh part's config zone. :mod:`.bus` is the wire of one
socket (wake/idle/sleep, send, receive, busy; routing by I2C address, so a socket may hold a
board of several chips), :mod:`.jig` the station's sockets, :mod:`.faults` injected faults.
:mod:`.tray` makes chips that are not factory-fresh (provisioned elsewhere, Trust&GO-like
and TrustFLEX-like parts under the emulated manufacturer CA of :mod:`.manufacturer`, which
is not Microchip's). Outside this package the product uses only :mod:`.bus` and :mod:`.jig`
(the connector, the kit bridge, the station); tray and manufacturer serve the tests.
"""
