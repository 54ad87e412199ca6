"""The byte channel between the harness and a sealed worker: framed JSON + raw blobs.

A message is one JSON header (plain values only) followed by raw byte blobs (serialised
states, numpy array bytes). Nothing is pickled, so the harness can read whatever a worker
sends without running code from it: a state is loaded with ``torch.load(weights_only=True)``
and an array is rebuilt with ``numpy.frombuffer`` from a dtype in :data:`ARRAY_DTYPES`.

Frame: ``u64 header length | header JSON (with "blob_sizes") | blob 0 | blob 1 | ...``.
The channel is a dedicated socket, so whatever the agent prints cannot corrupt it.
Framing imports no torch (the command line starts the workers before it imports torch);
the array functions import it when called.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

LENGTH = struct.Struct("<Q")
MAX_HEADER_BYTES = 16 * 2**20
ARRAY_DTYPES = ("uint8", "int64", "float32", "bool")


class ChannelClosed(ConnectionError):
    """The other end closed the channel before a whole message arrived."""


class MalformedMessage(ValueError):
    """A message that does not follow the frame or the array rules."""


def send_message(sock: socket.socket, header: dict[str, Any],
                 blobs: Sequence[bytes | memoryview] = ()) -> None:
    head = json.dumps({**header, "blob_sizes": [len(b) for b in blobs]}).encode()
    sock.sendall(LENGTH.pack(len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def _receive_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, filled = memoryview(buffer), 0
    while filled < size:
        got = sock.recv_into(view[filled:], size - filled)
        if got == 0:
            raise ChannelClosed(f"the channel closed after {filled} of {size} bytes")
        filled += got
    return buffer


def receive_message(sock: socket.socket) -> tuple[dict[str, Any], list[bytearray]]:
    """One message: (header, blobs). Raises :class:`ChannelClosed` on a clean or early EOF.
    The blobs are the buffers the bytes were received into (not copied again: a long
    stream's query inputs are hundreds of MB per call)."""
    (size,) = LENGTH.unpack(_receive_exactly(sock, LENGTH.size))
    if size > MAX_HEADER_BYTES:
        raise MalformedMessage(f"a message header of {size} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_receive_exactly(sock, size))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedMessage(f"a message header that is not JSON ({error})") from None
    sizes = header.get("blob_sizes") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise MalformedMessage("a message header without a valid blob_sizes list")
    return header, [_receive_exactly(sock, s) for s in sizes]


def array_blob(tensor: torch.Tensor | np.ndarray) -> tuple[dict[str, Any], memoryview]:
    """(meta, raw bytes) of a tensor or array, for :func:`blob_array` at the other end; the
    bytes are a view of the array's memory (no copy), valid while it is unchanged."""
    import torch

    array = tensor.detach().cpu().numpy() if torch.is_tensor(tensor) else np.asarray(tensor)
    array = np.ascontiguousarray(array)
    if array.dtype.name not in ARRAY_DTYPES:
        raise MalformedMessage(f"arrays of dtype {array.dtype} are not sent; "
                               f"use one of {ARRAY_DTYPES}")
    return ({"dtype": array.dtype.name, "shape": list(array.shape)},
            memoryview(array.reshape(-1).view(np.uint8)))


def blob_array(meta: Any, blob: bytes | bytearray | memoryview) -> torch.Tensor:
    """Rebuild the tensor that :func:`array_blob` sent, checking dtype, shape and size; it
    shares the memory of a writable ``blob`` (a received buffer) and copies a read-only one."""
    import torch

    if not isinstance(meta, dict) or meta.get("dtype") not in ARRAY_DTYPES:
        raise MalformedMessage(f"array meta {meta!r}: dtype must be one of {ARRAY_DTYPES}")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise MalformedMessage(f"array meta {meta!r}: shape must be a list of sizes")
    dtype = np.dtype(meta["dtype"])
    if len(blob) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise MalformedMessage(f"an array of shape {shape} and dtype {dtype} arrived as "
                               f"{len(blob)} bytes")
    array = np.frombuffer(blob, dtype=dtype).reshape(shape)
    return torch.from_numpy(array if array.flags.writeable else array.copy())
