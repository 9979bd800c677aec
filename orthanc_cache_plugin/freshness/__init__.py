"""What version of a resource an answer belongs to: generations, ``LastUpdate``
and the settle window, decided as pure functions of what was read."""
