"""The eBPF assembler against hand-computed struct bpf_insn bytes, in both byte orders, and the bpf() wrapper (no privileges)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from eoe_filter.ebpf import asm
from eoe_filter.ebpf import syscall as sc
from eoe_filter.ebpf.asm import (
    FP,
    R0,
    R1,
    R2,
    R6,
    AsmError,
    Insn,
    Label,
    assemble,
    call,
    encode,
    exit_,
    goto,
    jump_if,
)

LE, BE = "little", "big"


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(("insn", "little", "big"), [
    # code, regs (LE: src<<4|dst, BE: dst<<4|src), off, imm
    (asm.mov(R0, 0), "b7 00 0000 00000000", "b7 00 0000 00000000"),
    (asm.mov(R6, R1), "bf 16 0000 00000000", "bf 61 0000 00000000"),
    (asm.mov32(R0, 2), "b4 00 0000 02000000", "b4 00 0000 00000002"),
    (asm.add(R2, 22), "07 02 0000 16000000", "07 20 0000 00000016"),
    (asm.sub(R2, R1), "1f 12 0000 00000000", "1f 21 0000 00000000"),
    (asm.and_(R1, 0xFFF), "57 01 0000 ff0f0000", "57 10 0000 00000fff"),
    (asm.rsh(R1, 4), "77 01 0000 04000000", "77 10 0000 00000004"),
    (asm.lsh(R1, 8), "67 01 0000 08000000", "67 10 0000 00000008"),
    (asm.or_(R1, R2), "4f 21 0000 00000000", "4f 12 0000 00000000"),
    (asm.to_be(R1, 16), "dc 01 0000 10000000", "dc 10 0000 00000010"),
    (asm.ldx(asm.W, R2, R1, 76), "61 12 4c00 00000000", "61 21 004c 00000000"),
    (asm.ldx(asm.B, R1, R2, 18), "71 21 1200 00000000", "71 12 0012 00000000"),
    (asm.ldx(asm.H, R1, R2, 38), "69 21 2600 00000000", "69 12 0026 00000000"),
    (asm.stx(asm.DW, FP, -8, R1), "7b 1a f8ff 00000000", "7b a1 fff8 00000000"),
    (asm.st(asm.W, FP, -4, 1), "62 0a fcff 01000000", "62 a0 fffc 00000001"),
    (asm.st(asm.W, FP, -4, 0xFFFFFFFF), "62 0a fcff ffffffff", "62 a0 fffc ffffffff"),
    (call("redirect"), "85 00 0000 17000000", "85 00 0000 00000017"),
    (call("skb_change_head"), "85 00 0000 2b000000", "85 00 0000 0000002b"),
    (exit_(), "95 00 0000 00000000", "95 00 0000 00000000"),
])
def test_single_instructions(insn: Insn, little: str, big: str):
    assert encode([insn], LE) == hexbytes(little)
    assert encode([insn], BE) == hexbytes(big)


def test_lddw_takes_two_slots_low_half_first():
    program = assemble([asm.ld64(R1, 0x1122334455667788), exit_()])
    assert len(program) == 3
    assert encode(program, LE) == hexbytes("18 01 0000 88776655  00 00 0000 44332211  95 00 0000 00000000")
    assert encode(program, BE) == hexbytes("18 10 0000 55667788  00 00 0000 11223344  95 00 0000 00000000")


def test_map_reference_becomes_a_pseudo_map_fd_load():
    program = assemble([asm.ld_map(R1, "counters"), exit_()], maps={"counters": 5})
    assert encode(program, LE)[:16] == hexbytes("18 11 0000 05000000  00 00 0000 00000000")
    assert encode(program, BE)[:16] == hexbytes("18 11 0000 00000005  00 00 0000 00000000")


def test_jumps_resolve_forward_and_backward_counting_lddw_as_two():
    program = assemble([
        Label("top"),
        jump_if(R1, "==", 5, "out"),   # 0: skips 1 + 2 + 1 slots
        asm.mov(R0, 1),                # 1
        asm.ld64(R2, 7),               # 2, 3
        goto("top"),                   # 4: back to 0
        Label("out"),
        exit_(),                       # 5
    ])
    assert program[0] == Insn(0x15, 1, 0, 4, 5)
    assert program[4] == Insn(0x05, 0, 0, -5, 0)
    assert encode(program[4:5], LE) == hexbytes("05 00 fbff 00000000")


@pytest.mark.parametrize(("condition", "code"), [("==", 0x15), (">", 0x25), (">=", 0x35), ("&", 0x45),
                                                 ("!=", 0x55), ("<", 0xA5), ("<=", 0xB5), ("s<", 0xC5)])
def test_jump_conditions_with_constant(condition: str, code: int):
    program = assemble([jump_if(R2, condition, 3, "x"), Label("x"), exit_()])
    assert program[0] == Insn(code, 2, 0, 0, 3)


def test_jump_comparing_registers_sets_the_source_bit():
    program = assemble([jump_if(R2, ">", R1, "x"), Label("x"), exit_()])
    assert encode(program[:1], LE) == hexbytes("2d 12 0000 00000000")


def test_unsigned_immediate_is_stored_as_the_signed_word_the_kernel_reads():
    assert Insn(0xB7, 0, 0, 0, 0xFFFFFFFF).imm == -1
    program = assemble([asm.jump_if32(R1, "!=", 0x8100_0000, "x"), asm.mov32(R0, 0xFFFF_FFFF), Label("x"), exit_()])
    assert encode(program, LE) == hexbytes("56 01 0100 00000081  b4 00 0000 ffffffff  95 00 0000 00000000")


@pytest.mark.parametrize("build", [lambda: jump_if(R1, "==", 0x8000_0000, "x"), lambda: asm.mov(R1, 0xFFFF_FFFF),
                                   lambda: asm.add(R1, 0x8000_0000)])
def test_64_bit_operations_refuse_constants_they_would_sign_extend(build):
    with pytest.raises(AsmError, match="sign-extended"):
        build()


@pytest.mark.parametrize(("items", "message"), [
    ([goto("nowhere"), exit_()], "undefined label 'nowhere'"),
    ([Label("a"), Label("a"), exit_()], "defined twice"),
    ([asm.mov(R0, 0)], "must be an exit or a jump"),
    ([], "1..1000000 instructions"),
    ([asm.ld_map(R1, "missing"), exit_()], "map 'missing'"),
])
def test_refused_programs_say_why(items: list, message: str):
    with pytest.raises(AsmError, match=message):
        assemble(items)


def test_jump_out_of_16_bit_range_is_refused():
    body = [asm.mov(R0, 0)] * 0x8000
    with pytest.raises(AsmError, match="out of range"):
        assemble([jump_if(R1, "==", 0, "far"), *body, Label("far"), exit_()])


@pytest.mark.parametrize("build", [
    lambda: call("no_such_helper"),
    lambda: jump_if(R1, "=~", 1, "x"),
    lambda: asm.to_be(R1, 8),
    lambda: Insn(0x07, 11),
    lambda: Insn(0x07, 0, 0, 0x8000),
    lambda: Insn(0x07, 0, 0, 0, 1 << 32),
    lambda: asm.ld64(R1, 1 << 64),
])
def test_malformed_instructions_are_refused(build):
    with pytest.raises(AsmError):
        build()


def test_a_program_load_a_signal_interrupted_is_tried_again(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[object, ...]] = []

    class Libc:
        def syscall(self, *args: object) -> int:
            calls.append(args)
            return -1 if len(calls) < 3 else 7

    monkeypatch.setattr(sc, "_libc", Libc())
    monkeypatch.setattr(sc.ctypes, "get_errno", lambda: errno.EAGAIN)
    assert sc.bpf(sc.BPF_PROG_LOAD, ctypes.c_int(0), "loading") == 7 and len(calls) == 3
    calls.clear()
    with pytest.raises(sc.BpfError):  # only a load is retried
        sc.bpf(sc.BPF_MAP_CREATE, ctypes.c_int(0), "creating")
    assert len(calls) == 1
