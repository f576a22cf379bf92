"""API: the HTTP routes and the /ws endpoint, thin adapters over the layers below.

Request checks, upload forms, problem+json and JSON responses, log redaction;
each handler reads the request, calls one domain operation, writes the answer.
"""
