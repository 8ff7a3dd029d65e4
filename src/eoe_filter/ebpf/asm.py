"""A small eBPF assembler: instructions as data, labels for jumps, helpers and maps by name.

The boards have no clang/LLVM, so the relays' kernel programs are written
here as lists of items: `Insn` (one resolved instruction), `Jump` (to a
`Label`), `Label`, `LoadImm64` and `LoadMap` (the two-slot `lddw`). The
builder functions below read like the kernel's own BPF_* macros, and
`assemble` resolves labels and map names into the flat program the
verifier reads; `encode` lays it out as NATIVE `struct bpf_insn`, whose
register nibbles swap places on big-endian machines (MIPS boards).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum


class Reg(IntEnum):
    """R0 return value, R1-R5 helper arguments (clobbered by calls), R6-R9 kept across calls, R10 frame."""

    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = Reg
FP = R10

# Instruction classes, sizes, modes and operations (linux/bpf_common.h, linux/bpf.h).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {W: 4, H: 2, B: 1, DW: 8}
IMM, MEM = 0x00, 0x60
K, X = 0x00, 0x08
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = range(0x00, 0xE0, 0x10)
TO_LE, TO_BE = 0x00, 0x08
JA, CALL, EXIT = 0x00, 0x80, 0x90
CONDITIONS = {"==": 0x10, ">": 0x20, ">=": 0x30, "&": 0x40, "!=": 0x50, "s>": 0x60, "s>=": 0x70,
              "<": 0xA0, "<=": 0xB0, "s<": 0xC0, "s<=": 0xD0}
"""Jump conditions by the operator they test; unsigned unless prefixed with s."""

PSEUDO_MAP_FD = 1
"""src_reg of an `lddw` whose immediate is a map file descriptor."""

HELPERS: dict[str, int] = {
    "map_lookup_elem": 1, "skb_store_bytes": 9, "clone_redirect": 13, "skb_vlan_push": 18, "skb_vlan_pop": 19,
    "redirect": 23, "skb_load_bytes": 26, "skb_change_tail": 38, "skb_change_head": 43, "check_mtu": 163,
}
"""Helper numbers (the order of __BPF_FUNC_MAPPER in linux/bpf.h, stable kernel ABI)."""
HELPER_NAMES = {number: name for name, number in HELPERS.items()}

INSN = struct.Struct("=BBhi")
"""NATIVE struct bpf_insn: u8 code, u8 dst_reg:4 + src_reg:4, s16 off, s32 imm."""
MAX_INSNS = 1_000_000


class AsmError(ValueError):
    """A program the assembler refuses: the message names the instruction or label."""


Operand = Reg | int


@dataclass(frozen=True, slots=True)
class Insn:
    """One resolved 8-byte instruction."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def __post_init__(self) -> None:
        _check("code", self.code, 0, 0xFF)
        _check("dst", self.dst, 0, 10)
        _check("src", self.src, 0, 15)  # pseudo sources (map fd, kfunc) share the field
        _check("off", self.off, -0x8000, 0x7FFF)
        _check("imm", self.imm, -0x8000_0000, 0xFFFF_FFFF)
        if self.imm > 0x7FFF_FFFF:  # an unsigned 32-bit constant, stored as the kernel reads it
            object.__setattr__(self, "imm", self.imm - (1 << 32))
        for name in ("code", "dst", "src", "off"):
            object.__setattr__(self, name, int(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class Jump:
    """A jump to a label; `code` holds class and operation, `src` is set when comparing registers."""

    code: int
    target: str
    dst: int = 0
    src: int = 0
    imm: int = 0


@dataclass(frozen=True, slots=True)
class Label:
    name: str


@dataclass(frozen=True, slots=True)
class LoadImm64:
    """dst = a 64-bit constant: two instruction slots."""

    dst: Reg
    value: int


@dataclass(frozen=True, slots=True)
class LoadMap:
    """dst = the map called `name`; its file descriptor is filled in by `assemble`."""

    dst: Reg
    name: str


Item = Insn | Jump | Label | LoadImm64 | LoadMap
Program = tuple[Insn, ...]


def _check(name: str, value: int, low: int, high: int) -> None:
    if not low <= int(value) <= high:
        raise AsmError(f"{name}={value} is outside {low}..{high}")


def _wide_immediate(value: int) -> int:
    """A 64-bit operation sign-extends its 32-bit immediate: refuse the constants that would surprise."""
    if not -0x8000_0000 <= int(value) <= 0x7FFF_FFFF:
        raise AsmError(f"immediate {value:#x} would be sign-extended to 64 bits; use the 32-bit form")
    return value


def _alu(op: int, dst: Reg, src: Operand, cls: int) -> Insn:
    if isinstance(src, Reg):
        return Insn(cls | op | X, dst, src)
    return Insn(cls | op | K, dst, 0, 0, _wide_immediate(src) if cls == ALU64 else src)


def mov(dst: Reg, src: Operand) -> Insn:
    """dst = src (64 bits)."""
    return _alu(MOV, dst, src, ALU64)


def mov32(dst: Reg, src: Operand) -> Insn:
    """dst = src (32 bits, upper half cleared)."""
    return _alu(MOV, dst, src, ALU)


def alu64(op: int, dst: Reg, src: Operand) -> Insn:
    """dst = dst <op> src, for any ALU operation (ADD, AND, LSH...)."""
    return _alu(op, dst, src, ALU64)


def add(dst: Reg, src: Operand) -> Insn:
    return _alu(ADD, dst, src, ALU64)


def sub(dst: Reg, src: Operand) -> Insn:
    return _alu(SUB, dst, src, ALU64)


def and_(dst: Reg, src: Operand) -> Insn:
    return _alu(AND, dst, src, ALU64)


def or_(dst: Reg, src: Operand) -> Insn:
    return _alu(OR, dst, src, ALU64)


def lsh(dst: Reg, src: Operand) -> Insn:
    return _alu(LSH, dst, src, ALU64)


def rsh(dst: Reg, src: Operand) -> Insn:
    return _alu(RSH, dst, src, ALU64)


def to_be(dst: Reg, bits: int) -> Insn:
    """dst = the low `bits` of dst in big-endian order: a swap on little-endian hosts, a truncation on big."""
    if bits not in (16, 32, 64):
        raise AsmError(f"byte swap width {bits} is not 16, 32 or 64")
    return Insn(ALU | END | TO_BE, dst, 0, 0, bits)


def ldx(size: int, dst: Reg, src: Reg, off: int) -> Insn:
    """dst = *(size *)(src + off)."""
    return Insn(LDX | MEM | size, dst, src, off)


def stx(size: int, dst: Reg, off: int, src: Reg) -> Insn:
    """*(size *)(dst + off) = src."""
    return Insn(STX | MEM | size, dst, src, off)


def st(size: int, dst: Reg, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm."""
    return Insn(ST | MEM | size, dst, 0, off, imm)


def ld64(dst: Reg, value: int) -> LoadImm64:
    _check("value", value, -(1 << 63), (1 << 64) - 1)
    return LoadImm64(dst, value)


def ld_map(dst: Reg, name: str) -> LoadMap:
    return LoadMap(dst, name)


def _jump(cls: int, dst: Reg, condition: str, src: Operand, target: str) -> Jump:
    if condition not in CONDITIONS:
        raise AsmError(f"unknown jump condition {condition!r} (one of {' '.join(CONDITIONS)})")
    op = CONDITIONS[condition]
    if isinstance(src, Reg):
        return Jump(cls | op | X, target, dst, src)
    _check("imm", src, -0x8000_0000, 0xFFFF_FFFF)
    return Jump(cls | op | K, target, dst, 0, _wide_immediate(src) if cls == JMP else src)


def jump_if(dst: Reg, condition: str, src: Operand, target: str) -> Jump:
    """if dst <condition> src goto target, comparing 64 bits."""
    return _jump(JMP, dst, condition, src, target)


def jump_if32(dst: Reg, condition: str, src: Operand, target: str) -> Jump:
    """if dst <condition> src goto target, comparing the low 32 bits (any u32 constant)."""
    return _jump(JMP32, dst, condition, src, target)


def goto(target: str) -> Jump:
    return Jump(JMP | JA, target)


def call(helper: str) -> Insn:
    """Call a kernel helper by its name in linux/bpf.h, without the bpf_ prefix."""
    if helper not in HELPERS:
        raise AsmError(f"unknown helper {helper!r}")
    return Insn(JMP | CALL, 0, 0, 0, HELPERS[helper])


def exit_() -> Insn:
    """Return R0."""
    return Insn(JMP | EXIT)


def _slots(item: Item) -> int:
    if isinstance(item, Label):
        return 0
    return 2 if isinstance(item, LoadImm64 | LoadMap) else 1


def assemble(items: Iterable[Item], maps: Mapping[str, int] | None = None) -> Program:
    """Resolve labels into jump offsets and map names into file descriptors.

    Refuses what the verifier would refuse less readably: an undefined or
    repeated label, a jump beyond 16 bits, an unknown map, a program that can
    run off its end (its last instruction must be an exit or a jump).
    """
    source = list(items)
    maps = maps or {}
    where: dict[str, int] = {}
    pc = 0
    for item in source:
        if isinstance(item, Label):
            if item.name in where:
                raise AsmError(f"label {item.name!r} defined twice")
            where[item.name] = pc
        pc += _slots(item)
    if not 0 < pc <= MAX_INSNS:
        raise AsmError(f"a program has 1..{MAX_INSNS} instructions, not {pc}")
    out: list[Insn] = []
    for item in source:
        if isinstance(item, Insn):
            out.append(item)
        elif isinstance(item, Jump):
            if item.target not in where:
                raise AsmError(f"jump to undefined label {item.target!r}")
            offset = where[item.target] - len(out) - 1
            if not -0x8000 <= offset <= 0x7FFF:
                raise AsmError(f"jump from instruction {len(out)} to {item.target!r} is out of range ({offset})")
            out.append(Insn(item.code, item.dst, item.src, offset, item.imm))
        elif isinstance(item, LoadImm64):
            value = item.value & (1 << 64) - 1
            out += [Insn(LD | IMM | DW, item.dst, 0, 0, value & 0xFFFF_FFFF), Insn(0, 0, 0, 0, value >> 32)]
        elif isinstance(item, LoadMap):
            if item.name not in maps:
                raise AsmError(f"program uses map {item.name!r}, which was not given")
            out += [Insn(LD | IMM | DW, item.dst, PSEUDO_MAP_FD, 0, maps[item.name]), Insn(0)]
    last = out[-1].code
    if last not in (JMP | EXIT, JMP | JA):
        raise AsmError(f"the last instruction (code {last:#04x}) must be an exit or a jump")
    return tuple(out)


def encode(program: Sequence[Insn], byteorder: str = sys.byteorder) -> bytes:
    """The instructions as the kernel reads them; `byteorder` is the machine's, a parameter for tests."""
    order = "<" if byteorder == "little" else ">"
    layout = struct.Struct(order + INSN.format[1:])
    big = byteorder == "big"
    return b"".join(layout.pack(i.code, (i.dst << 4 | i.src) if big else (i.src << 4 | i.dst), i.off, i.imm)
                    for i in program)
