"""Reports for people outside the factory: a batch's signed report (numbers, CA chain,
manifest, the checkpoint that covers it), built from the records and signed by the audit key.

:mod:`.batch` gathers the facts, :mod:`.chart` draws the throughput, :mod:`.html` renders
one self-contained file and :mod:`.signing` signs and checks it.
"""
