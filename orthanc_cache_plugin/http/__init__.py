"""HTTP semantics without I/O: validators and preconditions (RFC 9110), content
negotiation, content codings (``encoding``), what shared caches may keep
(``sharing``), and Orthanc's own answers replayed byte for byte (``plain_answers``)."""
