"""Several Orthanc nodes sharing one Redis store: the bus that carries
generations and write announcements between them."""
