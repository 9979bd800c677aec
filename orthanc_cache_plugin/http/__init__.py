"""HTTP semantics without I/O: validators and preconditions (RFC 9110), content
negotiation, what shared caches may keep (``sharing``), and Orthanc's own
answers replayed byte for byte (``plain_answers``)."""
