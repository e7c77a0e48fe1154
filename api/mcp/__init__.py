"""colsmol's tools over the Model Context Protocol: the server (:mod:`api.mcp.server`, stdio for ``colsmol mcp``)
and its mount on the HTTP app at ``/mcp`` (:mod:`api.mcp.mount`)."""
