"""AS2 (RFC 4130) with pyas2lib: the sender, MDN checks, and the inbound message handling.

Importing this package installs :mod:`protocols.as2.compat` first, so that pyas2lib (and the
oscrypto it pins) import on OpenSSL releases with a two-digit patch number.
"""

from protocols.as2 import compat

compat.install()
