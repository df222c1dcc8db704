"""The web dashboard: server-rendered pages at ``/`` on the HTTP API's port (docs/dashboard.md).

``app.py`` owns the request (sign-in, CSRF, rendering), ``views.py`` the pages; templates and the
vendored htmx and uPlot are package data.
"""
