"""A local HTTP service run as a child of ftw: llama-server for `ftw serve`, TensorBoard for `ftw board`.

The address is checked before anything starts (a port in use is a message naming it and the
command to run instead, not a line in the child's log); the child runs in its own process group
with its whole output in a log; it is ready once a URL answers 200; Ctrl-C, or ftw ending, stops it.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wrapper.core import platform
from wrapper.core.errors import FtwError, StageError
from wrapper.core.procs import last_lines, popen_logged, stop_group
from wrapper.core.ui import done, spinner, step

LOOPBACK = "127.0.0.1"
READY_POLL_S = 0.25


@dataclass(frozen=True)
class Address:
    """Where a service listens, and the command that would run it elsewhere (`retry(host, port)`)."""

    host: str
    port: int
    retry: Callable[[str, int], str]

    @property
    def url_host(self) -> str:
        """The host to put in a URL: the loopback address for "all interfaces", IPv6 in brackets."""
        host = {"0.0.0.0": LOOPBACK, "": LOOPBACK, "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def root(self) -> str:
        return f"http://{self.url_host}:{self.port}"

    @property
    def public(self) -> bool:
        return self.host not in (LOOPBACK, "localhost", "::1")


def check_address(address: Address) -> None:
    """Bind host:port for a moment, as the service will (SO_REUSEADDR; Windows: SO_EXCLUSIVEADDRUSE)."""
    host, port = address.host, address.port
    try:
        family, kind, proto, _name, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise FtwError(
            f"--host {host}: not an address or a name this machine can resolve ({exc.strerror}). "
            f"Run: {address.retry(LOOPBACK, port)}"
        ) from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(*platform.exclusive_bind_option(), 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise address_error(exc, address) from None


def address_error(exc: OSError, address: Address) -> FtwError:
    host, port = address.host, address.port
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    other = address.retry(host, port + 1 if port < 65535 else 1024)
    if exc.errno == errno.EADDRINUSE:
        return FtwError(
            f"{where} is already in use (another server, or an earlier ftw command). Run on another port: {other}"
        )
    if exc.errno == errno.EACCES:
        return FtwError(f"{where}: not allowed to listen there (ports below 1024 need privileges). Run: {other}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return FtwError(
            f"{where}: {host} is not an address of this machine. Use 127.0.0.1 (this machine only) or "
            f"0.0.0.0 (every interface): {address.retry(LOOPBACK, port)}"
        )
    return FtwError(f"can't listen on {where}: {exc.strerror}. Run on another port: {other}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Service:
    """A started child: as a context manager it is stopped on exit."""

    name: str
    log: Path
    process: subprocess.Popen

    def stop(self) -> None:
        stop_group(self.process)

    def exited_error(self, what: str) -> StageError:
        """StageError's message reads "<what> (exit code N) failed. Last lines of the log: ..."."""
        return StageError(f"{what} (exit code {self.process.returncode})", self.log, last_lines(self.log))

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def spawn(name: str, argv: list[str], log: Path, cwd: Path | None = None) -> Service:
    """argv as a child in its own process group, its output appended to the log."""
    process = popen_logged(argv, log, cwd=cwd)
    return Service(name, log, process)


def wait_until_ready(service: Service, ready_url: str, timeout_s: float | None = None) -> None:
    """Until ready_url answers 200; the child exiting first is an error naming its log."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not answers(ready_url):
        if service.process.poll() is not None:
            raise service.exited_error(f"starting {service.name}")
        if deadline is not None and time.monotonic() > deadline:
            raise FtwError(
                f"{service.name} did not answer {ready_url} within {timeout_s:.0f} s; its log: {service.log}"
            )
        time.sleep(READY_POLL_S)


def start(
    name: str,
    argv: list[str],
    log: Path,
    ready_url: str,
    status: str,
    timeout_s: float | None = None,
    cwd: Path | None = None,
) -> Service:
    """Spawn and wait until ready under a spinner saying `status`; stopped again if that fails or is interrupted."""
    service = spawn(name, argv, log, cwd)
    try:
        with spinner(status):
            wait_until_ready(service, ready_url, timeout_s)
    except BaseException:
        service.stop()
        raise
    return service


def wait(service: Service) -> None:
    """Until the child exits (an error unless it exited cleanly) or Ctrl-C (stops it; a clean end)."""
    try:
        while service.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt as stop:
        service.stop()
        if type(stop) is not KeyboardInterrupt:  # SIGTERM/SIGHUP: ftw's own exit code for a signal
            raise
        step("")  # past the ^C the terminal echoed
        done(f"{service.name} stopped")
        return
    if service.process.returncode != 0:
        raise service.exited_error(service.name)
    done(f"{service.name} exited by itself; its log: {service.log}")
