"""Why a frame was not forwarded: one vocabulary for codecs, counters, logs and `stats`."""

from enum import IntEnum


class DropReason(IntEnum):
    RUNT = 1
    """Shorter than the relay can make sense of (EOE: under 36 wire bytes)."""
    FILTERED = 2
    """Refused by the relay's acceptance rule (`-F`, `--accept-*`)."""
    TAP_DOWN = 3
    """The service side refused the write because it is down (EIO)."""
    NET_DOWN = 4
    """The network interface is down or has no carrier (ENETDOWN, ENXIO)."""
    TOO_BIG = 5
    """Larger than the link or the EOE length field can carry (EMSGSIZE, > 65531 inner bytes)."""
    NO_BUFFERS = 6
    """The kernel had no buffer space (ENOBUFS)."""
    QUEUE_OVERFLOW = 7
    """The kernel dropped it on our socket's receive queue (PACKET_STATISTICS)."""
    TRUNCATED = 8
    """Larger than the receive buffer: never written truncated."""
    OTHER = 9
    """Any other send or receive error, logged with its errno."""

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")
