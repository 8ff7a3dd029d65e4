"""The in-kernel datapath's tools: an eBPF assembler, the bpf() system call, attaching, the relay programs.

Nothing here needs clang or LLVM: programs are assembled in Python from the
same wire constants the userspace codecs use, and loaded through ctypes.
"""
