"""The HTTP server: the Sanic app factory, the admin API and configuration reload.

Role: serve a runtime over HTTP and swap runtimes on reload. May import the runtime and every
stage; only the CLI imports it.
"""
