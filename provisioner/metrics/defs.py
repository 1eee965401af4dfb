"""Every metric a process of the line counts, in one place.

Each object lives in the process that counts (a station worker child, the signer, the
uploader...). Under the supervisor each of those processes writes its samples to files in
the metrics directory (:mod:`.multiproc`) and the process serving ``/metrics`` sums them; in
a process without that directory (tests, the CLI) they are ordinary in-process metrics.

Labels are bounded on purpose: a station, a socket, a step, an outcome, an exception class,
a status byte, a backend. Never a device id, a chip serial or anything a line makes more of
every day: each label value is a time series Prometheus keeps.

What is read from the database at scrape time (backlog, batches, sockets, audit) is not
here: see :mod:`.database`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Chip commands take milliseconds, a signature a few ms to a second, the registry up to its
# timeout: one set of buckets from 5 ms to 1 min covers every step.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The pacer usually does not wait at all; when the line outruns the registry's rate it
# waits up to ``60 / rate`` seconds per create and more when many uploaders queue.
PACE_BUCKETS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- devices (station workers: steps up to cert_verified; the uploader: done) -------------

DEVICE_STEPS = Counter(
    "provisioner_device_steps",
    "Attempts at a pipeline step by how they ended: ok, failed (the attempt failed; a chip "
    "error that can pass is tried again), unavailable (a service did not answer; the device "
    "waits). The done step is counted by the uploader, without a station.",
    ["station", "step", "outcome"],
)
DEVICE_FAILURES = Counter(
    "provisioner_device_failures",
    "Failed step attempts by the error's kind (its exception class, e.g. ChipCommandError, "
    "PolicyViolationError, UploadConflict).",
    ["station", "step", "reason"],
)
STEP_SECONDS = Histogram(
    "provisioner_step_duration_seconds",
    "Time to complete one pipeline step (successful attempts only), by step.",
    ["step"],
    buckets=STEP_BUCKETS,
)
CHIP_COMMAND_ERRORS = Counter(
    "provisioner_chip_command_errors",
    "Chip commands that failed, by status: cryptoauthlib's ATCA_STATUS code as a byte in "
    "hex (0xf4 execution error (chip 0x0F), 0xd2 parse error (0x03), 0xd6 ECC fault (0x05), "
    "0xd4 bus CRC (0xFF), 0xd1 verify failed (0x01), 0xf0 communication failure, 0xd0 no "
    "chip answers to wake).",
    ["station", "status"],
)

# --- the signer ------------------------------------------------------------------------------

SIGNATURES = Counter(
    "provisioner_signatures",
    "Signing requests by result: ok (a new certificate), repeat (the device's existing "
    "certificate returned again), refused (the issuance policy said no), unavailable (the "
    "token or the database did not answer), error.",
    ["result"],
)
SIGNING_SECONDS = Histogram(
    "provisioner_signing_duration_seconds",
    "Time for the signer to issue a new certificate: the policy, the HSM signature and the "
    "issuing transaction.",
    buckets=STEP_BUCKETS,
)
BREAKER_OPEN = Gauge(
    "provisioner_signer_breaker_open",
    "The token's circuit breaker: 1 open (token lost, signing stopped), 0 closed.",
    ["token"],
    multiprocess_mode="livemax",
)

# --- the registry ----------------------------------------------------------------------------

REGISTRY_CALLS = Counter(
    "provisioner_registry_calls",
    "HTTP calls to the device registry by result: ok (2xx), 4xx, 5xx, throttled (429), "
    "error (no answer: timeout, connection refused).",
    ["backend", "operation", "result"],
)
REGISTRY_UPLOADS = Counter(
    "provisioner_registry_uploads",
    "Device uploads by result: done, conflict (the registry holds another certificate), "
    "retry (the registry did not answer; tried again), parked (left for the periodic "
    "sync), refused (the registry refused the request).",
    ["result"],
)
PACE_WAIT_SECONDS = Histogram(
    "provisioner_registry_pace_wait_seconds",
    "Time a registry write waited for its slot under the shared create rate.",
    buckets=PACE_BUCKETS,
)

__all__ = [
    "BREAKER_OPEN",
    "CHIP_COMMAND_ERRORS",
    "DEVICE_FAILURES",
    "DEVICE_STEPS",
    "PACE_WAIT_SECONDS",
    "REGISTRY_CALLS",
    "REGISTRY_UPLOADS",
    "SIGNATURES",
    "SIGNING_SECONDS",
    "STEP_SECONDS",
]
