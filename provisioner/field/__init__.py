"""The field device: what a provisioned chip does after it leaves the line.

It mints Cloud IoT device JWTs with the chip's own key (:mod:`.jwt`), connects to the
registry's MQTT bridge with them (:mod:`.client`) and moves to a fresh on-chip key when
told to (:mod:`.rotation`). It is a demo and test device: a real product runs the same
protocol in its firmware, with the state file below kept in its flash.
"""
