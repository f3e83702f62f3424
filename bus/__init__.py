"""The wire protocol shared by probes, the aggregator, the Blender add-on and scripts.

One module owns topics, the envelope, encoding and safe decoding (see docs/protocol.md).
It imports only pyzmq and msgpack so the Blender add-on can bundle it unchanged.
"""
from .protocol import (
    SCHEMA_VERSION,
    Message,
    Publisher,
    Rejection,
    RejectCounter,
    decode,
    encode,
)

__all__ = [
    "SCHEMA_VERSION",
    "Message",
    "Publisher",
    "Rejection",
    "RejectCounter",
    "decode",
    "encode",
]
