"""Classic BPF as eBPF, for the hooks that take only eBPF: the subset link/bpf_classic's programs use.

TUNSETSTEERINGEBPF (which TAP queue gets a frame the host sends) takes an
eBPF socket filter; the kernel translates classic BPF itself only where it
takes classic BPF. Translating here lets one classic program (and its
interpreter-tested semantics) serve both kinds of hook.

Registers follow the kernel's own translation (bpf_convert_filter): A is
R0, where the legacy packet loads (BPF_LD | BPF_ABS/BPF_IND, which read the
skb in R6) put their result; X is R7; R8 keeps A across `ldx msh`. Those
loads keep the classic semantics: a load beyond the data ends the program
with 0. Ancillary loads and scratch memory are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..link import bpf_classic as c
from .asm import (
    ALU,
    AND,
    EXIT,
    JMP,
    LSH,
    R0,
    R1,
    R6,
    R7,
    R8,
    Insn,
    Item,
    Label,
    Program,
    assemble,
    goto,
    jump_if32,
    mov,
    mov32,
)

_CONDITIONS = {c.BPF_JEQ: "==", c.BPF_JGT: ">", c.BPF_JGE: ">=", c.BPF_JSET: "&"}
_NEGATIVE = 0x80000000
"""A classic packet offset with this bit set is an ancillary (SKF_AD_OFF) or link-layer (SKF_LL_OFF) load."""


def translate(program: Sequence[c.Insn]) -> Program:
    """The eBPF program that returns what the classic `program` returns, for an eBPF socket filter hook."""
    items: list[Item] = [mov(R6, R1), mov32(R0, 0), mov32(R7, 0)]
    for at, insn in enumerate(program):
        items.append(Label(f"c{at}"))
        items.extend(_one(insn, at))
    return assemble(items)


def _one(insn: c.Insn, at: int) -> Sequence[Item]:
    """Classic instruction number `at`; a jump skipping n instructions goes to label c{at + 1 + n}."""
    code, k = insn.code, insn.k

    def to(skip: int) -> str:
        return f"c{at + 1 + skip}"

    cls, mode, op = code & 0x07, code & 0xE0, code & 0xF0
    if cls == c.BPF_LD and mode in (c.BPF_ABS, c.BPF_IND) and not k & _NEGATIVE:
        return [Insn(code, 0, R7 if mode == c.BPF_IND else 0, 0, k)]  # same encoding in both instruction sets
    if cls == c.BPF_LD and mode == c.BPF_IMM:
        return [mov32(R0, k)]
    if cls == c.BPF_LDX and mode == c.BPF_IMM:
        return [mov32(R7, k)]
    if cls == c.BPF_LDX and mode == c.BPF_MSH:
        return [mov(R8, R0), Insn(c.BPF_LD | c.BPF_ABS | c.BPF_B, 0, 0, 0, k), Insn(ALU | AND, R0, 0, 0, 0x0F),
                Insn(ALU | LSH, R0, 0, 0, 2), mov32(R7, R0), mov(R0, R8)]
    if cls == c.BPF_ALU and op != c.BPF_NEG:
        return [Insn(code, R0, R7 if code & c.BPF_X else 0, 0, 0 if code & c.BPF_X else k)]  # same encoding
    if cls == c.BPF_JMP and op in _CONDITIONS:
        operand = R7 if code & c.BPF_X else k
        return [jump_if32(R0, _CONDITIONS[op], operand, to(insn.jt)), *([goto(to(insn.jf))] if insn.jf else [])]
    if cls == c.BPF_RET:
        return [*([] if code & c.BPF_A else [mov32(R0, k)]), Insn(JMP | EXIT)]
    if cls == c.BPF_MISC:
        return [mov32(R7, R0) if code & 0xF8 == c.BPF_TAX else mov32(R0, R7)]
    raise ValueError(f"classic instruction {code:#06x} is outside what translate() handles")
