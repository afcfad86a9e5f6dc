"""The two parties of a split network in separate processes or on separate hosts.

A :class:`Link` joins a server and a client over TCP with PyTorch's gloo backend; each
message is a checked header and a plain tensor, never a pickled object, and every wait has a
timeout that ends in a one-line :class:`~dpsnn.errors.TransportError`. On the link:
:mod:`dpsnn.transport.parties` (a client and a server training a split network),
:mod:`dpsnn.transport.several` (several clients, round-robin or SplitFed) and
:mod:`dpsnn.transport.recording` (what the server received, on disk). Example::

    import torch
    from dpsnn.transport import Link

    with Link.open("127.0.0.1:29500", "client", timeout=30) as link:   # the server runs elsewhere
        link.send("activation", 0, torch.randn(32, 500))
        gradient = link.recv("gradient", 0, dtype=torch.float32, shape=(32, 500))
"""

from dpsnn.errors import TransportError
from dpsnn.transport.link import DTYPES, Link, MessageKind, parse_address

__all__ = ["DTYPES", "Link", "MessageKind", "TransportError", "parse_address"]
