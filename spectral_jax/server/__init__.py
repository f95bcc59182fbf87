"""The HTTP front-end: a local web page and HTTP API standing on the library. ``app``: the HTTP
plumbing (admission, bodies, limits, the model's thread, JSON errors); ``routes``: the routing
table (paths, options, handlers); ``openapi``: that table as /openapi.json and /docs;
``model``: the model's side of a request (the feature cache, one analysis per upload);
``uploads``: request parsing (image, options, ``Param``)."""
