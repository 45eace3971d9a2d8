#!/usr/bin/env bash
# io_uring-ok.sh: exits 0 when this machine lets a process set up an io_uring
# (kernel support, kernel.io_uring_disabled, a container's seccomp profile),
# else prints why and exits 1. make test runs the io_uring passes only then,
# saying so when it skips them.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
exec "$PY" - <<'PYEOF'
import ctypes, errno, os, platform, sys
NR = {"x86_64": 425, "aarch64": 425}.get(platform.machine())
if NR is None:
    print(f"io_uring: unknown system call number on {platform.machine()}"); sys.exit(1)
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(NR, 4, params)
if fd < 0:
    e = ctypes.get_errno()
    print(f"io_uring unavailable on this machine: {os.strerror(e)} ({errno.errorcode.get(e, e)})"); sys.exit(1)
os.close(fd)
rel = platform.release().split(".")
if int(rel[0]) < 6:
    print(f"io_uring backend needs Linux >= 6.0 (this kernel: {platform.release()})"); sys.exit(1)
sys.exit(0)
PYEOF
