"""A batch report as one self-contained HTML file: inline CSS, an inline SVG chart, the CA
certificates embedded, no script and no external asset.

Self-contained so that the file a customer or certification body keeps is the whole
evidence: it opens offline, in any browser, years later, and its signature (appended by
:mod:`provisioner.reports.signing`) covers every byte of what it shows. Every value from the
records is HTML-escaped; nothing in the page can run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape

from provisioner.reports.batch import BatchFacts, CertInfo, run_time
from provisioner.reports.chart import throughput_svg

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;color:#1a202c;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #cbd5e0;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #cbd5e0;
padding:.25rem .6rem;text-align:left;vertical-align:top}th{background:#edf2f7}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}
.hash{word-break:break-all}pre{background:#f7fafc;border:1px solid #cbd5e0;padding:.6rem;
overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.muted{color:#4a5568}.draft{background:#fed7d7;border:2px solid #c53030;padding:.6rem;
font-weight:bold}.ok{background:#f0fff4;border:1px solid #38a169;padding:.6rem}
@media print{pre{white-space:pre-wrap}}
"""


def _t(when: datetime | None) -> str:
    return "—" if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(d: timedelta | None) -> str:
    if d is None:
        return "—"
    total = int(d.total_seconds())
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min {s:02d} s"


def _row(label: str, value: str, numeric: bool = False) -> str:
    cls = ' class="n"' if numeric else ""
    return f"<tr><th>{escape(label)}</th><td{cls}>{value}</td></tr>"


def _numbers(f: BatchFacts) -> str:
    y = f.yield_percent
    rows = [
        _row("Devices in the batch", str(f.count), True),
        _row("Done (certificate on the chip and in the registry)", str(f.done), True),
        _row("Verified on the chip (done, or waiting for the registry)", str(f.verified), True),
        _row("Failed", str(f.failed), True),
        _row("Released by a cancel (never started)", str(f.cancelled), True),
        _row("Certificates revoked since", str(f.revoked), True),
        _row(
            "Yield (done out of the devices worked on)",
            "—" if y is None else f"{y:.1f} % ({f.done} of {f.worked_on})",
            True,
        ),
        _row("Certificate quota / issued", f"{f.quota} / {f.issued}", True),
        _row("Created", _t(f.created_at)),
        _row("Started", _t(f.started_at)),
        _row("Ended", _t(f.finished_at)),
        _row("Run time (start to end)", _duration(run_time(f))),
    ]
    return "<table>" + "".join(rows) + "</table>"


def _failures(f: BatchFacts) -> str:
    if not f.failures:
        return "<p>No device of this batch is failed.</p>"
    rows = "".join(
        f"<tr><td>{escape(g.reason)}</td><td>{escape(g.action or '—')}</td>"
        f'<td class="n">{g.count}</td></tr>'
        for g in f.failures
    )
    note = (
        '<p class="muted">The 20 most frequent reasons are shown.</p>'
        if len(f.failures) >= 20
        else ""
    )
    return (
        "<table><tr><th>Reason</th><th>What was done with the part</th><th>Devices</th></tr>"
        f"{rows}</table>{note}"
    )


def _throughput(f: BatchFacts) -> str:
    t = f.throughput
    text = ""
    if t.start is not None:
        text = (
            f"<p>{t.total} devices had their certificate read back from the chip "
            f"(audit events <code>device.cert_verified</code>); at most {max(t.counts)} "
            f"in one {escape(t.bucket_name)}.</p>"
        )
    return text + throughput_svg(t)


def _cert(c: CertInfo) -> str:
    rows = [
        _row("Subject", escape(c.subject)),
        _row("Issuer", escape(c.issuer)),
        _row("Serial number (hex)", f'<span class="hash">{c.serial_hex}</span>'),
        _row("Valid", f"{_t(c.not_before)} to {_t(c.not_after)}"),
        _row("SHA-256 (of the DER)", f'<span class="hash">{c.sha256}</span>'),
    ]
    return (
        f"<h3>{escape(c.role.capitalize())}</h3><table>{''.join(rows)}</table>"
        f"<details><summary>Certificate (PEM)</summary><pre>{escape(c.pem)}</pre></details>"
    )


def _chain(f: BatchFacts) -> str:
    parts = [
        "<p>The root CA, and the intermediate CA(s) that issued this batch's device "
        "certificates. Compare the SHA-256 values with the ones you were given.</p>"
    ]
    parts += [_cert(c) for c in f.chain]
    if not any(c.role == "intermediate" for c in f.chain) and not f.missing_issuers:
        parts.append("<p>No certificate was issued for this batch.</p>")
    for m in f.missing_issuers:
        parts.append(
            f'<p>An intermediate CA with SHA-256 <span class="hash">{m.sha256}</span> issued '
            "certificates of this batch, but its certificate is not on file on the line "
            "server.</p>"
        )
    return "".join(parts)


def _manifest(f: BatchFacts) -> str:
    m = f.manifest
    if m is None:
        return (
            "<p>No manifest is part of this report (a manifest is made with "
            "<code>provisioner manifest build --batch "
            f"{f.batch_id}</code> and given to this report with <code>--manifest</code>).</p>"
        )
    rows = [
        _row("File", f"<code>{escape(m.name)}</code>"),
        _row("SHA-256 of the file", f'<span class="hash">{m.sha256}</span>'),
        _row("Entries (one per certified chip)", str(m.entries), True),
        _row("Signed by", escape(m.signer_subject)),
        _row("Signer certificate SHA-256", f'<span class="hash">{m.signer_sha256}</span>'),
    ]
    return (
        "<p>Every entry's signature was checked, and the manifest lists exactly this "
        f"batch's certified chips.</p><table>{''.join(rows)}</table>"
    )


def _checkpoint(f: BatchFacts) -> str:
    key = (
        f'<p>Audit public key SHA-256: <span class="hash">{f.audit_key_sha256}</span> '
        "(of its DER SubjectPublicKeyInfo; compare it with the fingerprint you pinned).</p>"
        if f.audit_key_sha256
        else "<p>The audit public key was not available when this draft was made.</p>"
    )
    if f.last_event_seq is None:
        return key + "<p>The audit trail holds no event of this batch.</p>"
    last = (
        f"<p>The batch's last event in the audit trail is event {f.last_event_seq} "
        f"(log <code>{escape(f.origin)}</code>).</p>"
    )
    cp = f.checkpoint
    if cp is None:
        return (
            key + last + "<p>No signed checkpoint covers it yet: the line signs one at the "
            "next interval; an admin can sign one now with "
            "<code>provisioner audit checkpoint</code>.</p>"
        )
    rows = [
        _row("Tree size (events covered)", str(cp.size), True),
        _row("Signed at", escape(cp.created_at)),
        _row("Why it was signed", escape(cp.reason)),
        _row("Root hash (hex)", f'<span class="hash">{cp.root_hash}</span>'),
    ]
    return (
        key + last + "<p>This signed checkpoint covers every event of the batch: it commits "
        "the audit trail, up to its size, to one root hash, signed by the audit key. Any later "
        "change to those events is detected against it.</p>"
        f"<table>{''.join(rows)}</table>"
        f"<p>The checkpoint, exactly (save it as <code>checkpoint-{cp.size}.txt</code>, "
        f"ending with a newline):</p><pre>{escape(cp.note)}</pre>"
    )


def _how_to_verify(f: BatchFacts, draft: bool) -> str:
    name = f"report-batch-{f.batch_id}.html"
    size = f.checkpoint.size if f.checkpoint else "SIZE"
    lines = (
        []
        if draft
        else [
            "# this report's signature (anywhere: no database needed)",
            f"provisioner report verify {name} --key audit-key.pem",
            "# or with the standalone verifier (Python and the 'cryptography' package only;",
            "# get it with: provisioner audit verifier -o verifier.py)",
            f"python3 verifier.py report {name} --key audit-key.pem",
            "",
        ]
    )
    lines += [
        "# on the line server: today's audit trail still extends this checkpoint",
        f"provisioner audit verify --since-checkpoint checkpoint-{size}.txt --key audit-key.pem",
        "# anywhere: the exported trail rebuilds the checkpoint's root",
        "provisioner audit export --format jsonl -o audit-trail.jsonl",
        f"python3 verifier.py segment audit-trail.jsonl --checkpoint checkpoint-{size}.txt "
        "--key audit-key.pem",
        "# one chip's events, with proofs they are in the signed trail",
        "provisioner audit prove CHIP_SERIAL -o proof.json",
        "python3 verifier.py proof proof.json --key audit-key.pem",
    ]
    return (
        "<p><code>audit-key.pem</code> is the audit public key you pinned (check its "
        "SHA-256 above).</p><pre>" + escape("\n".join(lines)) + "</pre>"
    )


def _signature_note(f: BatchFacts, draft: bool) -> str:
    if draft:
        return (
            '<p class="draft">DRAFT — NOT SIGNED. This is a preview of a batch that has not '
            "ended (or has no signed checkpoint yet); its numbers may still change. Do not "
            "hand it out as a record.</p>"
        )
    return (
        '<p class="ok">This report is signed by the audit key of log '
        f"<code>{escape(f.origin)}</code>. The signature is the comment at the very end of "
        "this file (view the page source): it covers every byte before it, so a single "
        "changed character makes the check fail.</p>"
    )


def render(f: BatchFacts, *, draft: bool) -> bytes:
    """The report's HTML (UTF-8, ending with a newline), before any signature."""
    title = f"Batch {f.batch_id} report" + (" (DRAFT)" if draft else "")
    body = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="muted">Station <code>{escape(f.station_id)}</code> · state
<strong>{escape(f.state)}</strong> · made {_t(f.generated_at)} by
<code>{escape(f.generated_by)}</code></p>
{_signature_note(f, draft)}
<h2>Numbers</h2>
{_numbers(f)}
<h2>Failures by reason</h2>
{_failures(f)}
<h2>Throughput</h2>
{_throughput(f)}
<h2>CA chain</h2>
{_chain(f)}
<h2>Manifest</h2>
{_manifest(f)}
<h2>Audit trail</h2>
{_checkpoint(f)}
<h2>How to verify</h2>
{_how_to_verify(f, draft)}
</body>
</html>
"""
    return body.encode("utf-8")
