"""The link between the line server and its stations, over the broker.

A station PC holds no database credentials and no PIN: everything it records, and the
certificate it asks for, travels as a signed request (:mod:`.envelope`) to the line
server's gateway for that station (:mod:`.gateway`), which checks it against the records
before writing anything. On the station, :class:`.remote.RemoteRecords` stands where the
database-backed :class:`.records.LocalRecords` stands on the line server: the socket task
and the pipeline do not know which one they have.
"""
