"""The HTTP front-end: a local web page and HTTP API standing on the library (``app``), and
the request parsing it needs (``uploads``)."""
