"""The line dashboard: server-rendered pages under ``/ui`` in the API process.

Sign-in is with a user's token (the same accounts and roles as the CLI and the API); a
signed-in browser holds only a random session id in an HttpOnly cookie. Every page and every
form declares its action (:mod:`provisioner.auth.roles`), forms carry the session's CSRF
token, and live parts of a page are updated over Server-Sent Events with fragments rendered
by the same templates as the page. No asset is fetched from anywhere but this server.
"""
