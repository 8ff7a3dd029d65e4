"""The kernel structures of the fast datapath in this process's NATIVE layout (no privileges).

Expected sizes and offsets are derived from the pointer width P, as the
uapi headers lay them out: 64-bit (x86_64, aarch64, MIPS n64, s390x) and
32-bit (i386, ARM, MIPS o32 and n32) alike. Where a C compiler is present,
its offsetof() over the real headers must agree.
"""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
import sys

import pytest

from eoe_filter.link.mmsg import Iovec, Mmsghdr, Msghdr, SendBatch
from eoe_filter.link.ring import (
    FLAG_BYTES,
    MIN_SLOTS,
    SLL_OFFSET,
    SLOT_HEADER,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    TPACKET2_HDRLEN,
    USER_BYTE,
    SockaddrLl,
    Tpacket2Hdr,
    TpacketReq,
    geometry,
    native_reader,
)

P = ctypes.sizeof(ctypes.c_void_p)


def layout(cls: type[ctypes.Structure]) -> dict[str, int]:
    return {name: getattr(cls, name).offset for name, *_ in cls._fields_} | {"sizeof": ctypes.sizeof(cls)}


def test_iovec_msghdr_mmsghdr():
    assert layout(Iovec) == {"iov_base": 0, "iov_len": P, "sizeof": 2 * P}
    assert layout(Msghdr) == {"msg_name": 0, "msg_namelen": P, "msg_iov": 2 * P, "msg_iovlen": 3 * P,
                              "msg_control": 4 * P, "msg_controllen": 5 * P, "msg_flags": 6 * P, "sizeof": 7 * P}
    assert layout(Mmsghdr) == {"msg_hdr": 0, "msg_len": 7 * P, "sizeof": 8 * P}


def test_tpacket2_hdr_sockaddr_ll_tpacket_req():
    assert layout(Tpacket2Hdr) == {"tp_status": 0, "tp_len": 4, "tp_snaplen": 8, "tp_mac": 12, "tp_net": 14,
                                   "tp_sec": 16, "tp_nsec": 20, "tp_vlan_tci": 24, "tp_vlan_tpid": 26,
                                   "tp_padding": 28, "sizeof": 32}
    assert layout(SockaddrLl) == {"sll_family": 0, "sll_protocol": 2, "sll_ifindex": 4, "sll_hatype": 8,
                                  "sll_pkttype": 10, "sll_halen": 11, "sll_addr": 12, "sizeof": 20}
    assert layout(TpacketReq) == {"tp_block_size": 0, "tp_block_nr": 4, "tp_frame_size": 8, "tp_frame_nr": 12,
                                  "sizeof": 16}
    assert (SLL_OFFSET, TPACKET2_HDRLEN) == (32, 52)


def test_slot_header_reads_the_fields_where_ctypes_puts_them_in_native_order():
    slot = bytearray(64)
    hdr = Tpacket2Hdr.from_buffer(slot)
    hdr.tp_status, hdr.tp_len, hdr.tp_snaplen, hdr.tp_mac = 0x11, 0x10203, 0x10001, 0x42
    hdr.tp_vlan_tci, hdr.tp_vlan_tpid = 0x2FFE, 0x88A8
    SockaddrLl.from_buffer(slot, SLL_OFFSET).sll_pkttype = 4
    assert SLOT_HEADER.unpack_from(slot) == (0x11, 0x10203, 0x10001, 0x42, 0x2FFE, 0x88A8, 4)
    assert slot[:4] == (0x11).to_bytes(4, sys.byteorder)
    del hdr


def test_a_slot_goes_back_to_the_kernel_at_the_store_to_the_byte_of_tp_status_user():
    """Flags in every byte (VLAN, TP_STATUS_GSO_TCP, TP_STATUS_TS_SOFTWARE): cleared, the slot is still ours."""
    slot = bytearray(64)
    hdr = Tpacket2Hdr.from_buffer(slot)
    hdr.tp_status = TP_STATUS_USER | 0x50 | 1 << 8 | 1 << 29
    slot[FLAG_BYTES:FLAG_BYTES + 3] = bytes(3)
    assert hdr.tp_status == TP_STATUS_USER | 0x50
    slot[USER_BYTE] = 0
    assert hdr.tp_status == TP_STATUS_KERNEL
    del hdr


def test_native_reader_refuses_fields_out_of_order():
    assert native_reader([(Tpacket2Hdr, 0, "tp_len"), (Tpacket2Hdr, 0, "tp_mac")]).format == "=4xI4xH"
    with pytest.raises(ValueError):
        native_reader([(Tpacket2Hdr, 0, "tp_mac"), (Tpacket2Hdr, 0, "tp_len")])


def test_send_batch_iov_words_are_the_iovecs_each_message_points_to():
    batch = SendBatch(4)
    batch.iov[2 * 3] = 0x1000
    batch.iov[2 * 3 + 1] = 86
    msg = batch._msgs[3].msg_hdr
    assert msg.msg_iovlen == 1 and (msg.msg_iov.contents.iov_base, msg.msg_iov.contents.iov_len) == (0x1000, 86)
    assert ctypes.addressof(msg.msg_iov.contents) == ctypes.addressof(batch._iovs) + 3 * ctypes.sizeof(Iovec)


@pytest.mark.parametrize(("max_frame", "page"), [(1522, 4096), (9022, 4096), (65557, 4096), (1522, 16384),
                                                 (1522, 65536)])
def test_ring_geometry(max_frame: int, page: int):
    req = geometry(max_frame, 4, page_size=page)
    per_block = req.tp_block_size // req.tp_frame_size
    assert req.tp_block_size % page == 0 and req.tp_frame_size % 16 == 0
    assert req.tp_frame_size >= TPACKET2_HDRLEN + 16 + 16 + 4 + max_frame + 64  # macoff + frame + padding
    assert per_block >= 1 and req.tp_frame_nr == per_block * req.tp_block_nr >= MIN_SLOTS


C_PROGRAM = r"""
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/if_packet.h>
#define F(t, m) printf(#t "." #m " %zu\n", offsetof(struct t, m))
#define S(t) printf(#t ".sizeof %zu\n", sizeof(struct t))
int main(void) {
    F(iovec, iov_len); S(iovec);
    F(msghdr, msg_iov); F(msghdr, msg_iovlen); F(msghdr, msg_control); F(msghdr, msg_controllen);
    F(msghdr, msg_flags); S(msghdr); F(mmsghdr, msg_len); S(mmsghdr);
    F(tpacket2_hdr, tp_mac); F(tpacket2_hdr, tp_vlan_tci); F(tpacket2_hdr, tp_vlan_tpid); S(tpacket2_hdr);
    F(sockaddr_ll, sll_pkttype); S(sockaddr_ll); S(tpacket_req);
    printf("TPACKET2_HDRLEN %zu\n", (size_t)TPACKET2_HDRLEN);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_c_compiler_agrees(tmp_path):
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text(C_PROGRAM)
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, capture_output=True)
    c = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], check=True, capture_output=True,
                                                            text=True).stdout.splitlines())
    ours = {"iovec": Iovec, "msghdr": Msghdr, "mmsghdr": Mmsghdr, "tpacket2_hdr": Tpacket2Hdr,
            "sockaddr_ll": SockaddrLl, "tpacket_req": TpacketReq}
    for key, value in c.items():
        if key == "TPACKET2_HDRLEN":
            assert int(value) == TPACKET2_HDRLEN
            continue
        struct_name, member = key.split(".")
        cls = ours[struct_name]
        got = ctypes.sizeof(cls) if member == "sizeof" else getattr(cls, member).offset
        assert got == int(value), key


def test_slot_header_size_matches_its_last_field():
    assert SLOT_HEADER.size == SLL_OFFSET + SockaddrLl.sll_pkttype.offset + 1
    assert struct.calcsize("=" + SLOT_HEADER.format.lstrip("=")) == SLOT_HEADER.size
