"""A stock grpcio client of the Secrets service on a unix socket, independent of the helper's code.

Usage: python3 get_secret.py SOCKET ID [AUTHORITY]

Calls /moby.buildkit.secrets.v1.Secrets/GetSecret with a hand-encoded GetSecretRequest
(field 1, the id) and prints `ID: N bytes, sha256 HEX` for the value (GetSecretResponse field 1),
or `ID: CODE: DETAILS` for an error. AUTHORITY, when given, is set as grpc.default_authority.
Never prints the value.
"""

import hashlib
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def read_varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def request(secret_id):
    data = secret_id.encode()
    return b"\x0a" + varint(len(data)) + data


def response_data(buf):
    """Field 1 (bytes) of a GetSecretResponse; other fields are skipped."""
    pos, data = 0, b""
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire == 2:
            n, pos = read_varint(buf, pos)
            if field == 1:
                data = buf[pos:pos + n]
            pos += n
        else:
            raise ValueError(f"unexpected wire type {wire} in GetSecretResponse")
    return data


def main():
    socket, secret_id = sys.argv[1], sys.argv[2]
    options = [("grpc.default_authority", sys.argv[3])] if len(sys.argv) > 3 else []
    with grpc.insecure_channel(f"unix:{socket}", options=options) as channel:
        call = channel.unary_unary("/moby.buildkit.secrets.v1.Secrets/GetSecret")
        try:
            value = response_data(call(request(secret_id), timeout=20))
        except grpc.RpcError as e:
            print(f"{secret_id}: {e.code().name}: {e.details()}")
            return 1
    print(f"{secret_id}: {len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
