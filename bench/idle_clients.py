#!/usr/bin/env python3
"""Logs in N clients to a PostgreSQL server (or proxy) and keeps them idle.

    python3 bench/idle_clients.py HOST PORT USER PASSWORD DATABASE N

With IDLE_TLS=1 in the environment each client first asks for TLS (SSLRequest) and logs in
over it, without checking the certificate (as sslmode=require). Each client sends a StartupMessage, answers SCRAM-SHA-256 (or cleartext/md5/trust) and waits
for ReadyForQuery. Once all N are logged in it prints "ready N" and holds the connections
until its standard input closes. Standard library only, so a bench can run it anywhere.
"""
import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import sys


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


async def read_message(reader):
    header = await reader.readexactly(5)
    length = struct.unpack("!i", header[1:])[0]
    return header[:1], await reader.readexactly(length - 4)


SALTED = {}


def scram_final(password: str, client_first_bare: str, server_first: str):
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    key = (password, attrs["s"], attrs["i"])
    if key not in SALTED:  # the same user's salt repeats: derive its key once
        salt = base64.b64decode(attrs["s"])
        SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
    salted = SALTED[key]
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=biws,r=" + attrs["r"]
    auth_message = ",".join([client_first_bare, server_first, without_proof]).encode()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return without_proof + ",p=" + base64.b64encode(proof).decode()


def unverified_tls():
    """A TLS context that encrypts without checking the server (sslmode=require)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def login(host, port, user, password, database):
    reader, writer = await asyncio.open_connection(host, port)
    if os.environ.get("IDLE_TLS") == "1":
        writer.write(struct.pack("!ii", 8, 80877103))
        if await reader.readexactly(1) != b"S":
            raise RuntimeError("the server does not offer TLS")
        await writer.start_tls(unverified_tls())
    params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    body = struct.pack("!i", 196608) + params
    writer.write(struct.pack("!i", len(body) + 4) + body)
    client_first_bare = ""
    while True:
        tag, body = await read_message(reader)
        if tag == b"R":
            code = struct.unpack("!i", body[:4])[0]
            if code == 10:  # SASL
                nonce = base64.b64encode(os.urandom(18)).decode()
                client_first_bare = "n=,r=" + nonce
                first = ("n,," + client_first_bare).encode()
                payload = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
                writer.write(message(b"p", payload))
            elif code == 11:  # SASL continue
                final = scram_final(password, client_first_bare, body[4:].decode())
                writer.write(message(b"p", final.encode()))
            elif code == 3:  # cleartext
                writer.write(message(b"p", password.encode() + b"\0"))
            elif code == 5:  # md5
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                writer.write(message(b"p", b"md5" + outer.encode() + b"\0"))
        elif tag == b"E":
            raise RuntimeError("login failed: " + body.decode(errors="replace"))
        elif tag == b"Z":
            return writer


async def main():
    host, port, user, password, database, count = sys.argv[1:7]
    writers = []
    for start in range(0, int(count), 200):
        batch = [
            asyncio.wait_for(login(host, int(port), user, password, database), 30)
            for _ in range(start, min(start + 200, int(count)))
        ]
        writers.extend(await asyncio.gather(*batch))
    print("ready", len(writers), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.write(message(b"X", b""))
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
