"""The web console under ``/console/``: what happened to any message, and the buttons to fix it.

Server-rendered (Jinja2 templates and one stylesheet shipped in this package; no JavaScript
needed, nothing fetched from elsewhere), on whenever ``admin.token`` is set. Modules:
`routes` (the blueprint, the session guard, login/logout), `sessions` (signed cookies, CSRF
tokens), `queries` (what the pages show, read through the store's indexed console reads and
`gateway.delivery.admin`), and one module per group of pages: `pages` (overview, search,
message timeline), `deliveries`, `repair` (quarantine, destinations), `tester`.
"""

from gateway.console.routes import console_blueprint

__all__ = ["console_blueprint"]
