"""What every server-rendered web space shares (the students' portal, the back office's pages):
templates, security headers and a strict CSP, CSRF tokens, session cookies. Plain HTTP helpers:
it knows no room above it and no SQL."""
