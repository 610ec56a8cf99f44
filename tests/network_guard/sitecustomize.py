"""Network guard for servers under test: every Python process started with this folder on
PYTHONPATH imports it at start-up (Python's `sitecustomize` hook), and then reports and refuses
any attempt to reach a host that is not this machine.

An audit hook sees every name lookup and every connect/sendto a Python process makes
(`socket.getaddrinfo`, `socket.connect`, ...), whichever library makes it (httpx, aiohttp,
urllib). The attempt is written to stderr as one line starting with MARKER, which lands in
the server's log, and is refused, so nothing leaves the machine even when a test fails.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

MARKER = "OUTBOUND CONNECTION ATTEMPT"
# Names that resolve on the machine itself (/etc/hosts), never through a DNS server.
LOCAL_NAMES = frozenset(
    {"", "localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname()}
)


def is_local(host: object) -> bool:
    if host is None:
        return True
    name = (host.decode("utf-8", "replace") if isinstance(host, bytes) else str(host)).strip("[]")
    if name.lower() in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False  # a name to look up: a question for a DNS server
    return address.is_loopback or address.is_unspecified


def guard(event: str, args: tuple[object, ...]) -> None:
    if event in {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}:
        host = args[0]
    elif event in {"socket.connect", "socket.sendto"}:
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) not in {socket.AF_INET, socket.AF_INET6}:
            return  # Unix sockets: BentoML's own runner connections
        host = address[0] if isinstance(address, tuple) else address
    else:
        return
    if is_local(host):
        return
    sys.stderr.write(f"{MARKER}: {event} {host!r} from pid {os.getpid()}\n")
    sys.stderr.flush()
    raise ConnectionRefusedError(f"tests/network_guard: no connection to {host!r} from a test")


sys.addaudithook(guard)
