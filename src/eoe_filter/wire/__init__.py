"""Wire formats as pure functions over bytes: no sockets, no root, no host byte order."""
