"""The decoder process: untrusted bytes are probed and decoded in a child process, so that a decoder that crashes,
hangs or runs out of memory on one input costs that input -- a reject (decoder_crash, timeout, too_large) -- and
never the Ray worker, its task (which Ray would retry on the same input) or the job. It contains failures, not
attackers: it is no security sandbox.

How, and why so:
- A fresh interpreter (`python -m rdtf.pipeline.isolation`), not a multiprocessing child: fork is unsafe in a threaded
  Ray worker, and spawn and forkserver children re-import the parent's `__main__` (in a Ray worker, Ray's worker
  script). It imports only numpy, Pillow and the decoders: it starts in 0.15 s and holds 34 MB here, where
  anything that imports `schemas` (pyarrow, pandas) takes 0.4 s and 123 MB before decoding anything.
- One child per worker process (and memory limit), shared by the probe and decode stages and by every task the
  worker runs, so its start-up is paid once per worker; after a failure a new one is started for the next input.
  That is why `_PROCESSES` is module state, rdtf's only one: Ray runs the stages as tasks, which share nothing but
  their worker process.
- Limits. The child caps its own memory (RLIMIT_DATA) at what it holds after start-up plus `max_memory_mb`, so a
  runaway allocation fails inside the child (MemoryError: too_large) instead of exhausting the node; libraries a
  decoder loads on first use are imported outside the limit. The parent waits at most `timeout_s` for each answer,
  then kills the child (timeout). A child that dies by a signal is a decoder_crash, except SIGKILL, which only the
  kernel's out-of-memory killer sends it (too_large).
- Requests and answers are pickled over a socket pair, with arrays sent as they lie in memory (pickle protocol 5,
  out of band) and received in place: a sticker's frames (16 x 256 x 256 x 3 bytes) cross in 0.6 ms, against 8.6 ms
  through multiprocessing's Connection, which copies them into and out of the pickle.

Run directly only by DecoderProcess: `python -m rdtf.pipeline.isolation FD MAX_MEMORY_MB`.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import os
import pickle
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from rdtf.pipeline.stage import Reject

# A child's start-up: an interpreter and the decoders' imports, 0.1 s here; generous for a node under load.
START_TIMEOUT_S = 120.0
# The child's exit status when memory ran out outside a decoder (reading a request, sending an answer).
EXIT_OUT_OF_MEMORY = 3
# How often the child checks that its parent is alive, seconds.
ORPHAN_CHECK_S = 1.0
# Socket buffers that hold a sticker's frames (3 MiB) in one go; Linux caps them at net.core.wmem_max.
SOCKET_BUFFER = 4 * 2**20
# The "allocate" fault grows memory by this much at a time.
ALLOCATE_STEP = 16 * 2**20


class DecoderProcess:
    """A child process that runs decoding functions one call at a time, under a memory limit and a time limit."""

    def __init__(self, max_memory_mb: int):
        self.max_memory_mb = max_memory_mb
        self._process: subprocess.Popen | None = None
        self._socket: socket.socket | None = None
        self._imported: set[str] = set()  # libraries the running child has imported outside its memory limit
        self._lock = threading.Lock()  # one call at a time, whatever thread of the worker calls

    def start(self) -> None:
        """Start the child unless it runs. RuntimeError if it cannot start: a broken install, not a bad input."""
        with self._lock:
            self._start()

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout_s: float,
        imports: tuple[str, ...] = (),
        fault: str | None = None,
    ) -> Any:
        """`fn(*args)` in the child: its result, or Reject (fn's own, or decoder_crash, timeout, too_large).

        `fn` must be importable by name (a module-level function). `imports`: libraries `fn` loads on first use,
        imported beforehand outside the memory and time limits (decord: 1.5 s and 830 MB of libraries), so that no
        input is charged for them. `fault` is a testing aid (inject_fault)."""
        if fault is not None:
            fn, args = inject_fault, (fault, timeout_s, self.max_memory_mb, fn, args)
        with self._lock:
            self._start()
            if not self._imported.issuperset(imports):
                self._call(import_outside_limit, (imports, self.max_memory_mb), START_TIMEOUT_S)
                self._imported.update(imports)
            return self._call(fn, args, timeout_s)

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        """Stop the child, if it runs."""
        with self._lock:
            if self._process is not None:
                self._stop()

    def _start(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                return
            self._stop()  # it died between two inputs (killed from outside): no input to blame
        parent, child = socket.socketpair()
        for end in (parent, child):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        # glibc gives each thread a malloc arena of 64 MiB; two arenas keep the memory limit counting what is used.
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        with child:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "rdtf.pipeline.isolation", str(child.fileno()), str(self.max_memory_mb)],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._socket = parent
        try:
            ready = _readable(parent, START_TIMEOUT_S) and _receive(parent) == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._stop()
            raise RuntimeError(f"the decoder process did not start (exit status {code}; its error is in this log)")

    def _call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> Any:
        try:
            _send(self._socket, (fn, args))
            if not _readable(self._socket, timeout_s):
                self._stop()
                raise Reject("timeout", f"no result within decode.timeout_s={timeout_s:g} s: decoder killed")
            status, value = _receive(self._socket)
        except (EOFError, OSError):  # the child is gone: its end of the socket closed under a send or a receive
            raise self._died() from None
        if status == "too_large":
            self._stop()  # a MemoryError may leave a C library half-way: start clean
            raise Reject("too_large", f"decoding needed more than decode.max_memory_mb={self.max_memory_mb} MiB")
        if status == "reject":
            raise Reject(*value)
        if status == "error":
            raise RuntimeError(f"in the decoder process: {value}")
        return value

    def _stop(self) -> int:
        """Kill the child (if it still runs) and forget it: the next call starts a new one. Its exit status."""
        self._process.kill()  # a no-op on a child that already exited: wait() still reports how it ended
        code = self._process.wait()
        self._socket.close()
        self._process, self._socket = None, None
        self._imported.clear()
        return code

    def _died(self) -> Reject:
        """The reject for an input whose decoding ended the child."""
        code = self._stop()
        if code in (-signal.SIGKILL, EXIT_OUT_OF_MEMORY):
            return Reject("too_large", f"the decoder process was killed for memory (exit status {code})")
        how = f"by signal {-code} ({signal.strsignal(-code)})" if code < 0 else f"with exit status {code}"
        return Reject("decoder_crash", f"the decoder process died {how} on this input")


_PROCESSES: dict[int, DecoderProcess] = {}


def decoder_process(max_memory_mb: int) -> DecoderProcess:
    """This worker process's decoder process for `max_memory_mb`, started on its first use."""
    if max_memory_mb not in _PROCESSES:
        _PROCESSES[max_memory_mb] = DecoderProcess(max_memory_mb)
    return _PROCESSES[max_memory_mb]


@atexit.register
def _close_all() -> None:
    for process in _PROCESSES.values():
        process.close()


def _send(sock: socket.socket, obj: Any) -> None:
    """Pickle `obj`, its arrays' memory sent as it lies (out of band) after the sizes of every part."""
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    parts = [memoryview(header), *(buffer.raw() for buffer in buffers)]
    sock.sendall(struct.pack(f"<I{len(parts)}Q", len(parts), *(part.nbytes for part in parts)))
    for part in parts:
        sock.sendall(part)


def _receive(sock: socket.socket) -> Any:
    """What `_send` sent, each array rebuilt over its own buffer (writable, not copied again)."""
    (count,) = struct.unpack("<I", _read(sock, 4))
    header, *buffers = (_read(sock, size) for size in struct.unpack(f"<{count}Q", _read(sock, 8 * count)))
    return pickle.loads(header, buffers=buffers)


def _read(sock: socket.socket, size: int) -> bytearray:
    """Exactly `size` bytes, received in place; EOFError when the other end is closed."""
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        received = sock.recv_into(view[done:])
        if received == 0:
            raise EOFError
        done += received
    return buffer


def _readable(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the socket has something to read (an answer, or the end of a dead child) within `timeout_s`."""
    poller = select.poll()  # not select.select, which fails on descriptors above 1023 (a busy Ray worker has them)
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def inject_fault(action: str, timeout_s: float, max_memory_mb: int, fn: Callable[..., Any], args: tuple) -> Any:
    """A testing aid (decode.fault_injection): fail in the decoder process as a hostile input would, then `fn`."""
    if action == "abort":
        os.abort()
    elif action == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif action == "sleep":
        time.sleep(30 * timeout_s)  # far past the limit; returns (and decodes) only if the parent failed to kill it
    elif action == "allocate":
        # Twice the limit, touched 16 MiB at a time: MemoryError half-way, unless the limit does not hold.
        held = [bytearray(ALLOCATE_STEP) for _ in range(2 * max_memory_mb * 2**20 // ALLOCATE_STEP)]
        del held
    return fn(*args)


def import_outside_limit(modules: tuple[str, ...], max_memory_mb: int) -> None:
    """In the child: import `modules` with the memory limit lifted, then cap memory again above what they hold."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
    for name in modules:
        importlib.import_module(name)
    _cap_memory(max_memory_mb)


def _cap_memory(max_memory_mb: int) -> None:
    """Let this process's data grow by at most `max_memory_mb` from now. RLIMIT_DATA (Linux 4.7 on: the heap and
    every private writable mapping) rather than RLIMIT_AS, which also counts library code and reserved address
    space that holds no memory (decord's import alone maps 3.7 GB of it)."""
    with open("/proc/self/status") as status:
        data = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data + max_memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _exit_when_orphaned(parent: int) -> None:
    """Exit once the parent is gone (a killed Ray worker), even in the middle of a decode that hangs (one that
    releases the GIL: a C decoder spinning with the GIL held is stopped only by the parent's time limit)."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)


def _answer(fn: Callable[..., Any], args: tuple) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except Reject as reject:
        return "reject", (reject.reason, reject.message)
    except MemoryError:
        return "too_large", None
    except Exception as error:  # a bug: the stage makes it internal_error
        return "error", "".join(traceback.format_exception_only(type(error), error)).strip()


def serve(fd: int, max_memory_mb: int) -> None:
    """The child: import the decoders, cap memory, then answer one request at a time until the parent closes."""
    from PIL import Image

    import rdtf.pipeline.frame_readers  # noqa: F401 -- imported before the cap is measured, so imports do not count
    import rdtf.pipeline.probe  # noqa: F401

    Image.init()  # Pillow imports its format plugins on first use: here, outside the limits, instead
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    _cap_memory(max_memory_mb)
    sock = socket.socket(fileno=fd)
    _send(sock, "ready")
    while True:
        try:
            fn, args = _receive(sock)
        except EOFError:
            return
        _send(sock, _answer(fn, args))


if __name__ == "__main__":
    try:
        serve(int(sys.argv[1]), int(sys.argv[2]))
    except MemoryError:
        os._exit(EXIT_OUT_OF_MEMORY)
