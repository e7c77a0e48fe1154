"""The ``colsmol`` command line: commands (:mod:`api.cli.app`), local-or-server backends, the HTTP client for a
running server, and the server's advertisement. Importing this package imports none of them."""
