"""Prints, as a JSON list, TCP_NODELAY (0 or 1) of each TCP socket process PID has accepted on
PORT: each socket is borrowed with pidfd_getfd(2) (Linux 5.6+, root or CAP_SYS_PTRACE) and asked
with getsockopt. Used by tests/tls_serve_test.ts; exits non-zero with the reason when it cannot."""
import ctypes, json, os, socket, sys

SYS_PIDFD_OPEN, SYS_PIDFD_GETFD = 434, 438  # x86_64 and aarch64 alike
pid, port = int(sys.argv[1]), int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(SYS_PIDFD_OPEN, pid, 0)
if pidfd < 0:
    sys.exit("pidfd_open: %s" % os.strerror(ctypes.get_errno()))
out = []
for fd in os.listdir("/proc/%d/fd" % pid):
    try:
        if not os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:"):
            continue
    except OSError:
        continue
    mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
    if mine < 0:
        sys.exit("pidfd_getfd: %s" % os.strerror(ctypes.get_errno()))
    s = socket.socket(fileno=mine)
    try:
        if s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6):
            try:
                s.getpeername()  # a listener has no peer
                if s.getsockname()[1] == port:
                    out.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            except OSError:
                pass
    finally:
        s.close()
print(json.dumps(out))
