"""The NAT lab: hosts in network namespaces behind real Linux NAT, with coturn and Kamailio.

Used by the project's own lab tests and by users doing interop testing (``sipua lab``).
"""
