"""Prints a port P such that P + each offset given on the command line is free on 127.0.0.1.

The demo listens on P (proxy), P+1.. (shards) and P+1000 (metrics): the client scripts ask
for the offsets they use, e.g. `python3 free_port.py 0 1 2 3 4 1000`.
"""
import random
import socket
import sys


def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


offsets = [int(arg) for arg in sys.argv[1:]] or [0]
while True:
    port = random.randint(20000, 50000)
    if all(free(port + d) for d in offsets):
        print(port)
        break
