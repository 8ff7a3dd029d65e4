"""The fast datapath: a worker process per direction, frames moved in bursts with little kernel work each.

Where `simple` spends its time (one receive and one send system call per
frame, both directions in one interpreter) this datapath does less:

* Each direction runs in its own process, forked once the ports are open,
  so the two directions use two CPUs and never wait for each other's GIL.
* The network side is read from a TPACKET_V2 RX ring (link/ring.py): no
  system call per frame, and the kernel's copy happens in its receive path.
  It is written with sendmmsg (link/mmsg.py): one system call per burst.
* Frames are edited where they were received, in the ring slot or in a
  staging buffer with headroom, and sent from there: nothing is allocated
  or copied per frame. The TAP side costs its one read or write per frame.
* Counters go to the shared Counters once per burst.

Everything else is `simple`'s: the relay edits, the error policy, the
counters' meaning, the log lines. With -d/-dd the workers run simple's
per-frame loop, so the debug lines and hex dumps are the same.

With `--workers N` (N > 1, relay eoe) there are N such pairs of workers.
Pair k reads and writes queue k of a multi-queue TAP and its own network
socket, member k of a PACKET_FANOUT group whose classic BPF program
(bpf_classic.eoe_fanout_program) hashes the inner flow: every frame of a
flow goes through the same pair, in order. The kernel keeps a flow the
host sends on one TAP queue (link/tap.py). Each worker counts in a block
of its own of the shared counters.

The parent keeps the ports open and supervises: a worker writes a fatal
condition (a deleted interface) to its report pipe before it ends, and a
worker that ends unasked is reported too. Workers ignore SIGINT, SIGTERM
and SIGUSR1, which a terminal or a supervisor may send to the whole group:
stopping is the parent's decision. They stop when the write end of the
stop pipe closes, and die with the parent. start() and stop() belong to
the thread that runs the control loop (the main thread).
"""

from __future__ import annotations

import ctypes
import io
import logging
import mmap
import os
import select
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from ..counters import DirectionCounters
from ..link.abi import TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID
from ..link.bpf_classic import eoe_fanout_program
from ..link.mmsg import SendBatch
from ..link.packet_socket import RX_HEADROOM, PacketSocket
from ..link.ring import (
    FLAG_BYTES,
    SLOT_HEADER,
    TP_STATUS_COPY,
    TP_STATUS_USER,
    USER_BYTE,
    RxRing,
    interface_mtu,
)
from ..link.tap import Tap
from ..relays.base import Port, Unavailable
from ..wire.drops import DropReason
from ..wire.eoe import BUFFER_SIZE, ETH_HEADER_LEN
from ..wire.vlan import TAG_LEN, TPID_8021Q, restore_tag_into
from . import DatapathContext, log_creating, log_waiting
from .simple import Direction, EditFn, OnFatal

Spec = tuple[str, Port, Port, EditFn, int, DirectionCounters]
"""A direction as simple's Direction takes it: name, source, destination, edit, headroom, counters."""

BURST = 64
"""Frames per wake-up and per sendmmsg: amortises the calls, adds at most a burst's time of latency."""
STOP_TIMEOUT = 1.0
WATCH_TICK_MS = 500
"""How often the supervisor of a fanout group reads its members' queue drops and checks the binding."""
DEFAULT_MTU = 1500
_ALIGN = 16
_PACKET_OUTGOING = 4  # sll_pkttype of our own frames, seen only where PACKET_IGNORE_OUTGOING is missing
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class FastDirection(Direction):
    """One direction, burst by burst, in a worker process; errors and stop handled as `simple` does.

    The source is the RX ring `ring` (installed on the source socket by the
    parent), or else a TAP. A burst goes through in stages: all its reads,
    then all its edits, then all its writes. The interpreter runs its
    per-frame code markedly faster in a row than between system calls
    (measured here: ~20% of the CPU per frame).
    """

    def __init__(self, *args: Any, ring: RxRing | None, header_cut: tuple[int, int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ring = ring
        self.header_cut = header_cut
        """The relay's Relay.header_cut, when `edit` is its net_to_service."""

    def _loop(self) -> None:
        batch = SendBatch(BURST) if isinstance(self.dst, PacketSocket) else None
        if self.ring is not None:
            self._ring_loop(self.ring, batch)
        else:
            assert batch is not None, "a TAP source sends to a packet socket (FastDatapath._direction)"
            self._tap_loop(batch)

    def _ring_loop(self, ring: RxRing, batch: SendBatch | None) -> None:
        """Frames from the ring, edited in their slots; a slot goes back to the kernel once sent."""
        view, status, address = ring.map()  # edits index and slice-assign: a memoryview does both in place
        # A frame too big for its slot comes whole from the socket queue, into `spill`.
        spill = bytearray(self.at + BUFFER_SIZE)
        spill_view = memoryview(spill)
        spill_rx, spill_address = spill_view[self.at:], ctypes.addressof(ctypes.c_char.from_buffer(spill))
        offsets = ring.offsets
        slots = len(offsets)
        # A slot goes back to the kernel with one store, the last to it: a byte of tp_status (link/ring.py).
        releases = [at + USER_BYTE for at in offsets]
        no_flags = bytes(3)
        header = SLOT_HEADER.unpack_from
        edit, counters, receive = self.edit, self.counters, self.src.receive_into
        iov = batch.iov if batch is not None else None
        # Locals, not globals, in the per-frame code.
        user, copy, outgoing, vlan, tpid_valid = (TP_STATUS_USER, TP_STATUS_COPY, _PACKET_OUTGOING,
                                                  TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID)
        truncated, drop_reason, restore, tpid_8021q = DropReason.TRUNCATED, DropReason, restore_tag_into, TPID_8021Q
        # Cutting the relay's header off a frame whose tag the kernel lifted: no tag to put back first.
        cut = self.header_cut
        lifted_cut, lifted_shortest = (cut[0] - TAG_LEN, cut[1] - TAG_LEN) if cut else (0, 0)
        runt = DropReason.RUNT
        poller = self._poller()
        head = 0
        while not self.stopping:
            if not status[offsets[head] >> 2] & TP_STATUS_USER:
                if self._sleep(poller):
                    return
                if not status[offsets[head] >> 2] & TP_STATUS_USER and self._socket_error():
                    return
                continue
            first, last = head, min(head + BURST, slots)
            frames = nbytes = 0
            edited: list[memoryview] = []  # for a TAP: written once the whole burst is edited
            spilled = False
            while head < last:
                at = offsets[head]
                state, length, snaplen, mac, tci, tpid, pkttype = header(view, at)
                if not state & user:
                    break
                if state > 0xFF:  # flags beyond the byte of TP_STATUS_USER, cleared while that bit keeps the slot ours
                    view[at + FLAG_BYTES:at + FLAG_BYTES + 3] = no_flags
                if state & copy:
                    if spilled:
                        break  # one spilled frame per burst: the next burst takes this one
                    spilled = True
                    head += 1
                    try:
                        start, end = receive(spill, spill_rx, self.at)
                    except OSError as e:
                        if self._receive_failed(e):
                            return
                        continue
                    if end <= start:
                        if end < 0:
                            counters.drop(truncated)
                        continue
                    frame, base = spill_view, spill_address
                    result = edit(frame, start, end)  # type: ignore[arg-type]
                else:
                    head += 1
                    if pkttype == outgoing:
                        continue
                    if snaplen < length:
                        counters.drop(truncated)
                        continue
                    start = at + mac
                    end = start + snaplen
                    frame, base = view, address
                    if not state & vlan:
                        result = edit(frame, start, end)  # type: ignore[arg-type]
                    elif cut:
                        result = (start + lifted_cut, end) if snaplen >= lifted_shortest else runt
                    else:
                        start = restore(view, start, tpid if state & tpid_valid else tpid_8021q,  # type: ignore[arg-type]
                                        tci)
                        result = edit(frame, start, end)  # type: ignore[arg-type]
                if isinstance(result, drop_reason):
                    counters.drop(result)
                    continue
                start, end = result
                if iov is None:
                    edited.append(frame[start:end])
                else:
                    iov[2 * frames] = base + start
                    iov[2 * frames + 1] = end - start
                    frames += 1
                    nbytes += end - start
            if iov is None:
                if edited and not self._send_each(edited):
                    return
            elif frames and not self._flush(cast(SendBatch, batch), frames, nbytes):
                return
            for release in releases[first:head]:
                view[release] = 0
            if head == slots:
                head = 0

    def _tap_loop(self, batch: SendBatch) -> None:
        """Frames read one by one into the slots of a staging buffer, edited there, sent per burst."""
        at, edit, counters, iov, burst, drop_reason = self.at, self.edit, self.counters, batch.iov, BURST, DropReason
        stride = at + BUFFER_SIZE + _ALIGN - 1 & -_ALIGN
        staging = mmap.mmap(-1, burst * stride)  # address space; only the pages frames touch become memory
        view = memoryview(staging)
        address = ctypes.addressof(ctypes.c_char.from_buffer(staging))
        slots = [view[k * stride + at:(k + 1) * stride] for k in range(burst)]
        read = io.FileIO(self.src.fileno(), "r", closefd=False).readinto
        poller = self._poller()
        while not self.stopping:
            lengths: list[int] = []
            got: int | None = 0
            over = False
            while got is not None and len(lengths) < burst:
                try:
                    got = read(slots[len(lengths)])
                except OSError as e:
                    over = self._receive_failed(e)
                    got = None
                if got:
                    lengths.append(got)
            frames = nbytes = 0
            for k, n in enumerate(lengths):
                pos = k * stride + at
                result = edit(view, pos, pos + n)  # type: ignore[arg-type]  # a memoryview edits in place
                if isinstance(result, drop_reason):
                    counters.drop(result)
                    continue
                start, end = result
                iov[2 * frames] = address + start
                iov[2 * frames + 1] = end - start
                frames += 1
                nbytes += end - start
            if (frames and not self._flush(batch, frames, nbytes)) or over:
                return
            if got is None and self._sleep(poller):
                return

    def _send_each(self, frames: list[memoryview]) -> bool:
        """Write the burst's frames one by one to the TAP (it takes no more) and count them; False when
        it is gone for good. os.write itself: a TAP writes a frame whole or not at all."""
        write, fd, sent, nbytes = os.write, self.dst.fileno(), 0, 0
        for frame in frames:
            try:
                nbytes += write(fd, frame)
            except OSError as e:
                if self._send_failed(e):
                    return False
                continue
            sent += 1
        self.counters.add(sent, nbytes)
        return True

    def _flush(self, batch: SendBatch, count: int, nbytes: int) -> bool:
        """Send the burst and count it; a frame the kernel refuses is dropped as `simple` drops it.

        False when the destination is gone for good.
        """
        fd, iov = self.dst.fileno(), batch.iov
        frames = done = 0
        while done < count:
            n = batch.send(fd, done, count - done)
            if n > 0:
                done += n
                frames += n
                continue
            nbytes -= iov[2 * done + 1]
            done += 1
            if self._send_failed(OSError(-n, os.strerror(-n))):
                self.counters.add(frames, nbytes)
                return False
        self.counters.add(frames, nbytes)
        return True

    def _poller(self) -> select.poll:
        poller = select.poll()
        poller.register(self.src.fileno(), select.POLLIN)
        poller.register(self.stop_fd, select.POLLIN)
        return poller

    def _sleep(self, poller: select.poll) -> bool:
        """Block until the source has frames or the stop pipe hangs up; True to stop."""
        for fd, _ in poller.poll():
            if fd == self.stop_fd:
                return True
        return False

    def _socket_error(self) -> bool:
        """Take the ring socket's pending error (it keeps poll() awake), as `simple` takes a receive error;
        True to stop."""
        # SO_ERROR is in CPython's socket module, built for this architecture (MIPS numbers differ).
        err = cast(PacketSocket, self.src).sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return bool(err) and self._receive_failed(OSError(err, os.strerror(err)))


def _drain_queue(spec: Spec, on_fatal: OnFatal, log: logging.Logger) -> None:
    """Forward what waits in the source's queue with simple's per-frame loop, until the queue is empty.

    simple's loop returns once its source would block, because its stop fd
    (a pipe without writer) always polls ready.
    """
    hangup, closed = os.pipe2(os.O_CLOEXEC)
    os.close(closed)
    try:
        Direction(*spec, stop_fd=hangup, on_fatal=on_fatal, log=log, debug=0).run()
    finally:
        os.close(hangup)


@dataclass
class _Worker:
    name: str
    pid: int
    pidfd: int
    report: int
    """Read end of the pipe the worker writes its fatal reasons to."""
    reported: bool = False
    status: int | None = None


class FastDatapath:
    """Two worker processes per pair and their supervision; the parent keeps the ports and the control loop."""

    name = "fast"
    capabilities: frozenset[int] = frozenset()

    def __init__(self, ctx: DatapathContext) -> None:
        self.ctx = ctx
        self.pairs = ctx.relay.options.workers
        """Worker pairs (`--workers`), each with a TAP queue and a fanout socket of its own when more than one."""
        self._members: list[PacketSocket] = []
        self._member_index = 0
        """The interface index the members are bound to: the forwarder re-binds only its own socket."""
        self._workers: list[_Worker] = []
        self._stop_write = -1
        self._stopping = False
        self._watcher: threading.Thread | None = None

    def _pair(self, net: PacketSocket, service: Port, counters: tuple[DirectionCounters, DirectionCounters],
              suffix: str = "") -> list[Spec]:
        relay = self.ctx.relay
        return [
            ("net to service" + suffix, net, service, relay.net_to_service, 0, counters[0]),
            ("service to net" + suffix, service, net, relay.service_to_net, relay.service_headroom, counters[1]),
        ]

    def start(self) -> None:
        log_creating(self.ctx)
        ctx = self.ctx
        if self.pairs == 1:
            specs = self._pair(ctx.net, ctx.service, ctx.counters.directions)
        else:
            assert isinstance(ctx.service, Tap), "--workers is for relay eoe (config.build_options)"
            members = zip(self._join_fanout(), ctx.counters.workers_counters)
            specs = [spec for k, (member, counters) in enumerate(members)
                     for spec in self._pair(member, ctx.service.queue(k), counters, f" [{k}]")]
        rings = [self._ring_for(spec) for spec in specs]
        stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        try:
            for spec, ring in zip(specs, rings):
                self._workers.append(self._fork(spec, ring, stop_read))
        finally:
            os.close(stop_read)
        self._watcher = threading.Thread(target=self._watch, name="workers", daemon=True)
        self._watcher.start()
        log_waiting(self.ctx)

    def _join_fanout(self) -> list[PacketSocket]:
        """A socket per pair on the network interface, in one PACKET_FANOUT_CBPF group.

        The forwarder's own socket stays out of the group, because the
        forwarder binds it again to a re-created interface and a member
        cannot be bound again: it is muted (its promiscuous membership kept)
        once its queue is forwarded, and the watcher restarts the datapath
        when the forwarder re-binds it. A frame that arrives while the
        members are made is lost: this happens at start and restart only.
        """
        ctx, net = self.ctx, self.ctx.net
        options = ctx.relay.options
        try:
            net.mute()
        except OSError as e:
            raise Unavailable(f"cannot start {self.pairs} workers on {net.ifname}: {e.strerror}") from None
        assert isinstance(ctx.service, Tap)
        _drain_queue(self._pair(net, ctx.service, ctx.counters.directions)[0], ctx.on_fatal, ctx.log)
        program, fanout = ctx.relay.classic_filter() if options.filter else None, eoe_fanout_program(self.pairs)
        group = 0
        try:
            for _ in range(self.pairs):
                member = PacketSocket(program)
                self._members.append(member)
                if options.qdisc_bypass:
                    member.bypass_qdisc()
                member.bind(net.ifname, net.ifindex)
                group = member.join_fanout(group, fanout)
        except OSError as e:
            self._close_members()
            raise Unavailable(f"cannot start {self.pairs} workers on {net.ifname}: {e.strerror}") from None
        self._member_index = net.ifindex
        return self._members

    def _close_members(self) -> None:
        for member in self._members:
            member.close()
        self._members = []

    def _collect_queue_drops(self) -> None:
        """What the members' rings had no room for; the forwarder reads only its own (muted) socket's."""
        for member, (counters, _) in zip(self._members, self.ctx.counters.workers_counters):
            try:
                _, drops = member.take_statistics()
            except OSError:
                continue
            if drops:
                counters.drop(DropReason.QUEUE_OVERFLOW, drops)

    def _ring_for(self, spec: Spec) -> RxRing | None:
        """Install the RX ring of a packet socket source here, before start() returns: a frame that
        arrives later is not missed. The socket's queue is forwarded first, as installing purges it.

        With -d/-dd there is no ring: simple's per-frame loop prints the debug lines.
        """
        name, src, _, _, headroom, _ = spec
        if self.ctx.debug or not isinstance(src, PacketSocket):
            return None
        _drain_queue(spec, self.ctx.on_fatal, self.ctx.log)
        try:
            mtu = interface_mtu(src.sock, src.ifname)
        except OSError:  # gone for now: larger frames come whole through the socket queue anyway
            mtu = DEFAULT_MTU
        try:
            return RxRing(src.sock, mtu + ETH_HEADER_LEN + 2 * TAG_LEN, headroom + RX_HEADROOM)
        except OSError as e:
            self.ctx.log.warning("%s: no receive ring on %s (%s); forwarding frame by frame", name, src.ifname,
                                 os.strerror(e.errno or 0))
            return None

    def _fork(self, spec: Spec, ring: RxRing | None, stop_read: int) -> _Worker:
        report_read, report_write = os.pipe2(os.O_CLOEXEC)
        for stream in (sys.stdout, sys.stderr):  # or the child would write the parent's pending output again
            stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(self._stop_write)
            os.close(report_read)
            _work(self._direction(spec, ring, stop_read, report_write), stop_read, parent)
        os.close(report_write)
        return _Worker(spec[0], pid, os.pidfd_open(pid), report_read)

    def _direction(self, spec: Spec, ring: RxRing | None, stop_read: int, report_write: int) -> Direction:
        def report(why: str) -> None:
            try:
                os.write(report_write, why.encode(errors="replace")[:select.PIPE_BUF - 1] + b"\n")
            except OSError:
                pass  # the parent is gone: nobody left to tell

        common: dict[str, Any] = {"stop_fd": stop_read, "on_fatal": report, "log": self.ctx.log,
                                  "debug": self.ctx.debug}
        _, src, dst, edit, *_ = spec
        relay = self.ctx.relay
        if ring is not None or (not self.ctx.debug and isinstance(src, Tap) and isinstance(dst, PacketSocket)):
            return FastDirection(*spec, ring=ring, header_cut=relay.header_cut if edit == relay.net_to_service
                                 else None, **common)
        return Direction(*spec, **common)

    def _watch(self) -> None:
        """Pass on what the workers report, and report a worker that ends unasked."""
        poller = select.poll()
        owner: dict[int, _Worker] = {}
        for w in self._workers:
            for fd in (w.report, w.pidfd):
                poller.register(fd, select.POLLIN)
                owner[fd] = w
        running = len(self._workers)
        rebound = False
        while running:
            for fd, _ in poller.poll(WATCH_TICK_MS if self._members else None):
                w = owner[fd]
                if fd == w.report:
                    if not self._read_report(w):
                        poller.unregister(fd)
                    continue
                poller.unregister(fd)
                running -= 1
                while self._read_report(w):
                    pass
                w.status = os.waitpid(w.pid, 0)[1]
                if not self._stopping and not w.reported:
                    self.ctx.on_fatal(f"{w.name} worker (pid {w.pid}) {_ended(w.status)}")
            if self._members:
                self._collect_queue_drops()
                if self.ctx.net.ifindex != self._member_index and not rebound:
                    rebound = True
                    self.ctx.on_fatal(f"network interface {self.ctx.net.ifname} was re-created; "
                                      "the fanout group follows it")

    def _read_report(self, w: _Worker) -> bool:
        """Pass on the lines waiting in w's report pipe; False at its end."""
        data = os.read(w.report, select.PIPE_BUF)
        for line in data.decode(errors="replace").splitlines():
            w.reported = True
            self.ctx.on_fatal(line)
        return bool(data)

    def alive(self) -> bool:
        """Every worker runs (what the systemd watchdog vouches for)."""
        return not self._stopping and bool(self._workers) and all(w.status is None for w in self._workers)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._stopping or self._watcher is None:
            return
        self._stopping = True
        os.close(self._stop_write)
        self._watcher.join(timeout)
        if self._watcher.is_alive():
            for w in self._workers:
                if w.status is None:
                    self.ctx.log.warning("%s worker (pid %d) did not stop within %.0f s; killing it",
                                         w.name, w.pid, timeout)
                    try:
                        signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._watcher.join()
        for w in self._workers:
            os.close(w.pidfd)
            os.close(w.report)
        self._collect_queue_drops()
        self._close_members()


def _work(direction: Direction, stop_read: int, parent: int) -> NoReturn:
    """A worker's whole life: forward until the stop pipe hangs up, then leave without running exit handlers.

    os._exit, because everything else in this process (the netlink socket,
    the ports, atexit handlers) belongs to the parent. A parent killed with
    SIGKILL takes its workers along at once (PR_SET_PDEATHSIG): their copies
    of the sockets must not keep the interface promiscuous behind it.
    """
    try:
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)
        threading.Thread(target=_stop_on_hangup, args=(direction, stop_read), daemon=True).start()
        direction.run()
    except BaseException:
        direction.log.exception("%s worker failed", direction.name)
        os._exit(1)
    os._exit(0)


def _stop_on_hangup(direction: Direction, stop_read: int) -> None:
    """Set `stopping` when the parent closes the stop pipe: a loop busy with a flood checks it per burst."""
    poller = select.poll()
    poller.register(stop_read, select.POLLIN)
    poller.poll()
    direction.stopping = True


def _ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
