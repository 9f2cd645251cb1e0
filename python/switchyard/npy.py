"""float32 .npy files without numpy (Debian's python3-torch does not need it): what the
`switchyard` CLI reads and writes (`<f4`, C order)."""
import ast
import ctypes
import struct

import torch


def save(path, tensor):
    t = tensor.detach().to(torch.float32).contiguous()
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % (tuple(t.shape),)
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * (pad % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(ctypes.string_at(t.data_ptr(), t.numel() * 4) if t.numel() else b"")


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    major = data[6]
    hlen_size = 2 if major == 1 else 4
    hlen = int.from_bytes(data[8:8 + hlen_size], "little")
    header = ast.literal_eval(data[8 + hlen_size:8 + hlen_size + hlen].decode("latin1"))
    if header["descr"] not in ("<f4", "|f4") or header["fortran_order"]:
        raise ValueError(f"{path}: expected little-endian float32 in C order, got {header}")
    body = bytearray(data[8 + hlen_size + hlen:])
    shape = list(header["shape"])
    if not body:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.frombuffer(body, dtype=torch.float32).reshape(shape).clone()
