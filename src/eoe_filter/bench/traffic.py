"""Traffic generator and sink for the benchmark lab, in pure Python.

They must out-run a forwarder doing about a million frames/s, so no Python
code runs per frame on the hot path:

* one ctypes `sendmmsg`/`recvmmsg` call moves a whole batch, over
  mmsghdr/iovec arrays built once and reused;
* the per-frame fields (a sequence number, a CLOCK_MONOTONIC timestamp)
  travel in iovecs of their own, so a batch's fields sit contiguously in
  one small array, written or read with a single `struct` call, while the
  rest of every frame points at one shared template (generator) or one
  shared scratch buffer (sink).

Why not the mmap rings (measured on a 2-vCPU Linux 6.18 VM, 64-byte frames
into a veth, one pinned generator process):

* sendmmsg, 256 frames a call: 861k-869k frames/s (1400 B: 850k), with 98%
  of the time in the kernel; PACKET_TX_RING (TPACKET_V2, the frames
  prefilled, only the status words and one send() per 256 slots written
  from Python): 770k-792k (1400 B: 770k). The ring's skbs also carry its
  pages as fragments, and a clone queued to a receiving packet socket in
  the lab still points at them after the slot is handed back, so
  rewriting a slot (a new sequence number) can race the receiver's copy.
* recvmmsg sink with a generator on the other core: 580k-635k frames/s
  end to end, no drops; a PACKET_RX_RING sink: 431k-442k, because the ring
  copy runs in softirq context on the CPU that transmitted the frame -- in
  a veth/TAP lab that is the generator's or the forwarder's CPU, not the
  sink's.

Kernel ABI numbers come from link/abi.py and its structures use ctypes
native layout; wire fields are big-endian `struct` formats.  Sockets are
created in the network namespace of the calling thread; `InNetns` runs a
generator or a sink in a child process inside a named namespace, pinned to
a CPU.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import resource
import select
import socket
import struct
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol, Self

from ..lab import enter_netns
from ..link.abi import (
    ABI,
    ETH_P_ALL,
    PACKET_AUXDATA,
    PACKET_IGNORE_OUTGOING,
    PACKET_QDISC_BYPASS,
    PACKET_STATISTICS,
    SOL_PACKET,
    TPACKET_STATS,
)

FIELD_SIZE = 8  # sequence numbers and timestamps are big-endian u64
_U64 = struct.Struct(">Q")


# --- kernel ABI structures, native layout -------------------------------------
class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    # The kernel's struct user_msghdr: msg_iovlen and msg_controllen are
    # __kernel_size_t whatever the C library declares.
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int

_TRANSIENT = frozenset({errno.ENOBUFS, errno.EAGAIN, errno.EINTR})


# --- plain packet sockets -----------------------------------------------------
def open_packet_socket(ifname: str, *, receive: bool = True, auxdata: bool = True) -> socket.socket:
    """A raw packet socket bound to ifname that ignores its own host's
    outgoing frames; with auxdata=True `link.packet_socket.wire_view` can
    rebuild VLAN tags. A socket with receive=False gets no frames at all
    (send-only). Unlike link.packet_socket.PacketSocket it leaves the
    buffers and PACKET_AUXDATA to the caller: a sink asks for no
    ancillary data per frame."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if auxdata:
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.bind((ifname, ETH_P_ALL if receive else 0))
    except BaseException:
        sock.close()
        raise
    return sock


def socket_offset(wire_offset: int, tagged: bool) -> int:
    """Where a wire offset lands in received data: an outer 802.1Q/802.1ad
    tag is removed by the kernel before any packet socket sees the frame,
    so every offset past byte 12 of a tagged frame is 4 smaller."""
    return wire_offset - 4 if tagged and wire_offset >= 16 else wire_offset


# --- iovec layout shared by generator and sink --------------------------------
def _segments(total: int, fields: dict[str, int]) -> list[tuple[str | None, int, int]]:
    """Cut a frame of `total` bytes into iovec segments: (field name, or None
    for ordinary bytes, start, length); fields are FIELD_SIZE bytes."""
    segs: list[tuple[str | None, int, int]] = []
    pos = 0
    for name, off in sorted(fields.items(), key=lambda kv: kv[1]):
        if off < pos or off + FIELD_SIZE > total:
            raise ValueError(f"{name} field at {off} overlaps another field or passes byte {total}")
        if off > pos:
            segs.append((None, pos, off - pos))
        segs.append((name, off, FIELD_SIZE))
        pos = off + FIELD_SIZE
    if pos < total:
        segs.append((None, pos, total - pos))
    return segs


def _build_msgs(
    batch: int, segs: list[tuple[str | None, int, int]], base: int, field_addr: Callable[[str, int], int]
) -> tuple[ctypes.Array, ctypes.Array]:
    """mmsghdr and iovec arrays for `batch` frames: plain segments point at
    base + start, field segments at field_addr(name, frame index)."""
    iovs = (Iovec * (batch * len(segs)))()
    msgs = (Mmsghdr * batch)()
    for i in range(batch):
        first = i * len(segs)
        for j, (name, start, length) in enumerate(segs):
            iov = iovs[first + j]
            iov.iov_base = base + start if name is None else field_addr(name, i)
            iov.iov_len = length
        msgs[i].msg_hdr.msg_iov = ctypes.addressof(iovs) + first * ctypes.sizeof(Iovec)
        msgs[i].msg_hdr.msg_iovlen = len(segs)
    return msgs, iovs


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    """SO_*BUFFORCE (root may exceed net.core.*mem_max), else the capped option."""
    try:
        sock.setsockopt(ABI.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(ABI.SOL_SOCKET, plain, size)


def _cpu_since(before: resource.struct_rusage) -> tuple[float, float]:
    """User and system CPU seconds of the calling thread since `before`."""
    now = resource.getrusage(resource.RUSAGE_THREAD)
    return now.ru_utime - before.ru_utime, now.ru_stime - before.ru_stime


class _Stop(Protocol):
    def is_set(self) -> bool: ...


# --- generator ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GenReport:
    """What a generator offered: frames the kernel accepted, and how often
    it refused one (ENOBUFS/EAGAIN: a full queue; that frame was retried).
    cpu_user/cpu_sys: the sending thread's CPU seconds; a small user share
    shows the kernel, not Python, sets the pace."""

    frames: int
    bytes: int
    seconds: float
    refused: int
    first_seq: int
    cpu_user: float
    cpu_sys: float

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class Generator:
    """Sends one prebuilt frame over and over from a packet socket bound to
    ifname, in sendmmsg batches, optionally stamping each copy with a
    sequence number (big-endian u64 at seq_offset, counting from first_seq)
    and the CLOCK_MONOTONIC time in ns (big-endian u64 at ts_offset). The
    timestamp is taken once per batch just before sendmmsg, so it is early
    by up to one batch's send time: use small batches to measure latency.

    qdisc_bypass hands frames straight to the driver (PACKET_QDISC_BYPASS):
    cheaper, and a full device queue comes back as ENOBUFS instead of a
    silent qdisc drop. Offsets are wire offsets of the frame as given."""

    def __init__(
        self,
        ifname: str,
        frame: bytes,
        *,
        seq_offset: int | None = None,
        ts_offset: int | None = None,
        first_seq: int = 0,
        batch: int = 256,
        qdisc_bypass: bool = True,
        sndbuf: int = 16 << 20,
    ) -> None:
        fields = {k: v for k, v in (("seq", seq_offset), ("ts", ts_offset)) if v is not None}
        segs = _segments(len(frame), fields)
        self._frame_len = len(frame)
        self._batch = batch
        self._seq = first_seq
        self._has_seq = seq_offset is not None
        self._has_ts = ts_offset is not None
        self._template = ctypes.create_string_buffer(frame, len(frame))
        self._seqs = ctypes.create_string_buffer(FIELD_SIZE * batch)
        self._stamp = ctypes.create_string_buffer(FIELD_SIZE)  # one per batch, shared
        seqs, stamp = ctypes.addressof(self._seqs), ctypes.addressof(self._stamp)
        self._msgs, self._iovs = _build_msgs(
            batch,
            segs,
            ctypes.addressof(self._template),
            lambda name, i: seqs + FIELD_SIZE * i if name == "seq" else stamp,
        )
        self._sock = open_packet_socket(ifname, receive=False, auxdata=False)
        try:
            if qdisc_bypass:
                self._sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            _set_buffer(self._sock, ABI.SO_SNDBUFFORCE, ABI.SO_SNDBUF, sndbuf)
        except BaseException:
            self._sock.close()
            raise

    def run(
        self,
        *,
        count: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
        stop: _Stop | None = None,
    ) -> GenReport:
        """Send until count frames, duration seconds or stop.is_set(), at
        full speed or at `rate` frames/s (a token bucket one batch deep:
        a batch leaves when its first frame is due; a generator that falls
        more than a batch behind forgets the debt instead of bursting).
        Sequence numbers continue across calls."""
        if count is None and duration is None and stop is None:
            raise ValueError("give count, duration or stop")
        fd = self._sock.fileno()
        base = ctypes.addressof(self._msgs)
        size = ctypes.sizeof(Mmsghdr)
        full_fmt = struct.Struct(f">{self._batch}Q")
        remaining = count if count is not None else -1
        first_seq = self._seq
        sent = refused = 0
        usage0 = resource.getrusage(resource.RUSAGE_THREAD)
        t0 = schedule = time.monotonic()
        deadline = t0 + duration if duration is not None else float("inf")
        while remaining != 0:
            now = time.monotonic()
            if now >= deadline or (stop is not None and stop.is_set()):
                break
            if rate is not None:
                due = schedule + sent / rate
                if due > now:
                    time.sleep(due - now)
                elif now - due > self._batch / rate:
                    schedule += now - due
            n = self._batch if remaining < 0 else min(self._batch, remaining)
            if self._has_seq:
                fmt = full_fmt if n == self._batch else struct.Struct(f">{n}Q")
                fmt.pack_into(self._seqs, 0, *range(self._seq, self._seq + n))
            if self._has_ts:
                _U64.pack_into(self._stamp, 0, time.monotonic_ns())
            done = 0
            while done < n:
                r = _sendmmsg(fd, base + done * size, n - done, 0)
                if r >= 0:
                    done += r
                    continue
                err = ctypes.get_errno()
                if err not in _TRANSIENT:
                    raise OSError(err, f"sendmmsg: {os.strerror(err)}")
                refused += err != errno.EINTR
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    break
            sent += done
            self._seq += done
            if remaining > 0:
                remaining -= done
        seconds = time.monotonic() - t0
        user, sys_ = _cpu_since(usage0)
        return GenReport(sent, sent * self._frame_len, seconds, refused, first_seq, user, sys_)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- sink ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Latency:
    """One-way latency in ns (sink's receive time minus the batch stamp)."""

    samples: int
    min: int
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, values: array) -> Latency | None:
        if not values:
            return None
        s = sorted(values)
        n = len(s)
        return cls(n, s[0], s[n // 2], s[n * 9 // 10], s[n * 99 // 100], s[-1])


@dataclass(frozen=True, slots=True)
class SinkReport:
    """What a sink saw. `rate` is measured from the first batch's arrival to
    the last's (frames of the first batch excluded), so start-up and idle
    tails do not dilute it. `socket_drops` are frames the kernel dropped
    because the sink's socket buffer was full. With sequence numbers:
    `late` counts frames older than one already seen (reordered or
    duplicated), `missing` = span of sequence numbers seen - frames.
    cpu_user/cpu_sys: the receiving thread's CPU seconds."""

    frames: int
    bytes: int
    seconds: float
    rate: float
    socket_drops: int
    first_seq: int | None
    last_seq: int | None
    late: int
    missing: int
    latency: Latency | None
    cpu_user: float
    cpu_sys: float


class Sink:
    """Counts frames and bytes arriving on ifname (own outgoing frames
    ignored) with recvmmsg batches, optionally reading a sequence number
    and/or a timestamp (big-endian u64) from each frame.

    Offsets are in the data AS RECEIVED: for a frame sent with an outer
    802.1Q/802.1ad tag the kernel has removed the tag, so pass
    socket_offset(wire_offset, tagged=True). Only the first `snaplen`
    bytes are copied to user space; byte counts use the real lengths."""

    def __init__(
        self,
        ifname: str,
        *,
        seq_offset: int | None = None,
        ts_offset: int | None = None,
        batch: int = 256,
        snaplen: int = 128,
        rcvbuf: int = 64 << 20,
        max_latency_samples: int = 1_000_000,
    ) -> None:
        fields = {k: v for k, v in (("seq", seq_offset), ("ts", ts_offset)) if v is not None}
        segs = _segments(max(snaplen, *(o + FIELD_SIZE for o in fields.values()), 0), fields)
        self._batch = batch
        self._fields = {name: ctypes.create_string_buffer(FIELD_SIZE * batch) for name in fields}
        self._scratch = ctypes.create_string_buffer(sum(length for _, _, length in segs))
        addrs = {name: ctypes.addressof(buf) for name, buf in self._fields.items()}
        self._msgs, self._iovs = _build_msgs(
            batch, segs, ctypes.addressof(self._scratch), lambda name, i: addrs[name] + FIELD_SIZE * i
        )
        words = memoryview(self._msgs).cast("B").cast("I")  # type: ignore[arg-type]
        self._lens = words[Mmsghdr.msg_len.offset // 4 :: ctypes.sizeof(Mmsghdr) // 4]
        self._max_latency_samples = max_latency_samples
        self._sock = open_packet_socket(ifname, receive=False, auxdata=False)
        try:
            _set_buffer(self._sock, ABI.SO_RCVBUFFORCE, ABI.SO_RCVBUF, rcvbuf)
            # Bind only now that the options are set: the hook starts here.
            self._sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            self._sock.close()
            raise

    def _socket_drops(self) -> int:
        """Drops since the last call (the kernel resets the counters on read)."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS.size)
        return int(TPACKET_STATS.unpack(raw)[1])

    def run(
        self,
        *,
        count: int | None = None,
        duration: float | None = None,
        idle: float | None = None,
        stop: _Stop | None = None,
    ) -> SinkReport:
        """Receive until count frames, duration seconds from the call,
        idle seconds without a frame once one has arrived, or stop.is_set()."""
        if count is None and duration is None and idle is None and stop is None:
            raise ValueError("give count, duration, idle or stop")
        fd = self._sock.fileno()
        msgs = ctypes.addressof(self._msgs)
        flags = socket.MSG_DONTWAIT | socket.MSG_TRUNC
        seq_buf, ts_buf = self._fields.get("seq"), self._fields.get("ts")
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        latencies = array("q")
        frames = nbytes = late = first_batch = 0
        first_seq: int | None = None
        expect = max_seq = 0
        t_first = t_last = 0.0
        self._socket_drops()
        usage0 = resource.getrusage(resource.RUSAGE_THREAD)
        start = time.monotonic()
        deadline = start + duration if duration is not None else float("inf")
        while True:
            n = _recvmmsg(fd, msgs, self._batch, flags, None)
            now = time.monotonic()
            if n < 0:
                err = ctypes.get_errno()
                if err not in _TRANSIENT:
                    raise OSError(err, f"recvmmsg: {os.strerror(err)}")
                if (
                    now >= deadline
                    or (stop is not None and stop.is_set())
                    or (idle is not None and frames and now - t_last >= idle)
                ):
                    break
                poller.poll(50)
                continue
            if not frames:
                t_first, first_batch = now, n
            t_last = now
            frames += n
            nbytes += sum(self._lens[:n])
            if seq_buf is not None:
                seqs = struct.unpack_from(f">{n}Q", seq_buf)
                if first_seq is None:
                    first_seq = expect = max_seq = seqs[0]
                if seqs == tuple(range(expect, expect + n)):
                    expect += n
                    max_seq = expect - 1
                else:
                    for s in seqs:
                        if s < expect:
                            late += 1
                        else:
                            expect = s + 1
                    max_seq = expect - 1
            if ts_buf is not None and len(latencies) < self._max_latency_samples:
                now_ns = time.monotonic_ns()
                latencies.extend(now_ns - t for t in struct.unpack_from(f">{n}Q", ts_buf))
            if (count is not None and frames >= count) or now >= deadline or (stop is not None and stop.is_set()):
                break
        seconds = t_last - t_first
        user, sys_ = _cpu_since(usage0)
        return SinkReport(
            frames=frames,
            bytes=nbytes,
            seconds=seconds,
            rate=(frames - first_batch) / seconds if seconds > 0 else 0.0,
            socket_drops=self._socket_drops(),
            first_seq=first_seq,
            last_seq=max_seq if first_seq is not None else None,
            late=late,
            missing=(max_seq - first_seq + 1 - frames) if first_seq is not None else 0,
            latency=Latency.of(latencies),
            cpu_user=user,
            cpu_sys=sys_,
        )

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- running a generator or sink in another namespace, on another core ---------
class Runner(Protocol):
    """A Generator or a Sink: run(stop=..., **run_kwargs) -> report."""

    @property
    def run(self) -> Callable[..., Any]: ...

    def close(self) -> None: ...


def _child_main(conn: Connection, netns: str | None, cpu: int | None, factory: Callable[[], Runner], stop: _Stop) -> None:
    try:
        if netns is not None:
            enter_netns(netns)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        runner = factory()
    except Exception:  # noqa: BLE001 - any failure is the parent's to report
        conn.send(("error", traceback.format_exc()))
        return
    try:
        conn.send(("ready", None))
        kwargs = conn.recv()
        conn.send(("done", runner.run(stop=stop, **kwargs)))
    except (EOFError, BrokenPipeError):  # the parent closed the pipe: just stop
        pass
    except Exception:  # noqa: BLE001 - any failure is the parent's to report
        conn.send(("error", traceback.format_exc()))
    finally:
        runner.close()


def expect(conn: Connection, proc: BaseProcess, what: str, timeout: float | None) -> Any:
    """A traffic child's next ("kind", value) report's value; its silence, death or traceback raised here."""
    if not conn.poll(timeout):
        raise TimeoutError(f"child {proc.pid} did not report {what!r} in {timeout} s")
    try:
        kind, value = conn.recv()
    except EOFError:
        raise RuntimeError(f"child {proc.pid} died (exit code {proc.exitcode})") from None
    if kind == "error":
        raise RuntimeError(f"child {proc.pid} failed:\n{value}")
    return value


class InNetns:
    """A Generator or Sink built by `factory` in a child process that has
    entered network namespace `netns` (None: stay) and is pinned to `cpu`,
    so generator, forwarder and sink can run on different cores. The
    constructor returns once the child's socket is bound (a sink is then
    already counting into its socket buffer); `start(**run_kwargs)` starts
    `run`, `result()` returns its report. Uses the spawn start method, so
    factory must be picklable (e.g. functools.partial(Sink, "veth0"))."""

    def __init__(self, netns: str | None, factory: Callable[[], Runner], *, cpu: int | None = None, timeout: float = 30.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_child_main, args=(child, netns, cpu, factory, self._stop), daemon=True)
        self._proc.start()
        child.close()
        try:
            self._expect("ready", timeout)
        except BaseException:
            self.close()
            raise

    def _expect(self, what: str, timeout: float | None) -> Any:
        return expect(self._conn, self._proc, what, timeout)

    def start(self, **run_kwargs: Any) -> None:
        self._conn.send(run_kwargs)

    def stop(self) -> None:
        self._stop.set()

    def result(self, timeout: float | None = None) -> Any:
        value = self._expect("done", timeout)
        self._proc.join(5)
        return value

    def close(self) -> None:
        """Stop and reap the child (our own, by its PID)."""
        self._stop.set()
        self._conn.close()
        self._proc.join(2)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
