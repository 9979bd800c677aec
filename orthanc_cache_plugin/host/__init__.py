"""The thin layer that talks to Orthanc: the only code importing ``orthanc``.
Registers routes and callbacks, reads changes, calls Orthanc's REST API."""
