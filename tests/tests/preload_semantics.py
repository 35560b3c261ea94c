# Socket semantics under libhoststack_preload.so, checked against what
# Linux does for kernel sockets. Run with LD_PRELOAD set, as
#   python3 preload_semantics.py HOST_ADDR PEER_ADDR NETNS HOST6_ADDR
# (the lab: HOST_ADDR is hoststack's, PEER_ADDR the kernel peer's in NETNS).
# Prints "ok NAME" per check and "all ok" at the end; exits 1 on a failure.
import array, errno, fcntl, os, select, signal, socket, subprocess, sys, termios, time

HOST, PEER, NETNS, HOST6 = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
# The test shows only stdout: a failure's traceback goes there too.
sys.stderr = sys.stdout
KERNEL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
PEER_PORT = 9500

def ok(name):
    print("ok", name, flush=True)

def queued(s):
    n = array.array("i", [0])
    fcntl.ioctl(s.fileno(), termios.FIONREAD, n, True)
    return n[0]

def wait_queued(s, want, timeout=5):
    # Bytes the peer sent reach us a moment after its send returns.
    deadline = time.time() + timeout
    while queued(s) < want and time.time() < deadline:
        time.sleep(0.005)
    assert queued(s) == want, f"{queued(s)} bytes queued, want {want}"

def expect_errno(e, fn, *a):
    try:
        fn(*a)
    except OSError as x:
        assert x.errno == e, f"{fn}: errno {x.errno} ({x}), want {e}"
        return
    raise AssertionError(f"{fn} succeeded, want errno {e}")

# A kernel helper in the namespace: an echo server on PEER_PORT, and on
# demand a client of ours (one line per command on stdin).
HELPER = r'''
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(16)
def echo(c):
    while True:
        d = c.recv(65536)
        if not d: c.close(); return
        c.sendall(d)
def serve():
    while True:
        c, _ = srv.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
print("up", flush=True)
conns = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "connect":
        c = socket.create_connection((cmd[1], int(cmd[2])), timeout=10); conns.append(c); print("connected", flush=True)
    elif cmd[0] == "send":
        conns[int(cmd[1])].sendall(cmd[2].encode()); print("sent", flush=True)
    elif cmd[0] == "recv":
        c = conns[int(cmd[1])]; want = int(cmd[2]); got = b""
        while len(got) < want:
            d = c.recv(want - len(got))
            if not d: break
            got += d
        print("got", got.decode() or "-", flush=True)
    elif cmd[0] == "eof":
        c = conns[int(cmd[1])]; c.settimeout(10); print("eof" if c.recv(1) == b"" else "data", flush=True)
    elif cmd[0] == "close":
        conns[int(cmd[1])].close(); print("closed", flush=True)
'''
helper = subprocess.Popen(["ip", "netns", "exec", NETNS, "python3", "-c", HELPER, PEER, str(PEER_PORT)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=KERNEL_ENV)
assert helper.stdout.readline().strip() == "up"
def cmd(line):
    helper.stdin.write(line + "\n"); helper.stdin.flush()
    return helper.stdout.readline().strip()

try:
    # socket, options kept by the placeholder, bind to port 0, listen
    L = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    assert L.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    L.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    assert L.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    expect_errno(errno.ENOTCONN, L.getpeername)
    L.bind(("0.0.0.0", 0))
    L.listen(16)
    port = L.getsockname()[1]
    assert port != 0
    assert L.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    ok("socket bind listen getsockname getsockopt")

    L.setblocking(False)
    expect_errno(errno.EAGAIN, L.accept)
    expect_errno(errno.ENOTCONN, L.shutdown, socket.SHUT_RDWR)
    ok("non-blocking accept EAGAIN, shutdown ENOTCONN")

    ep = select.epoll()
    ep.register(L.fileno(), select.EPOLLIN)
    expect_errno(errno.EEXIST, ep.register, L.fileno(), select.EPOLLIN)
    other = socket.socket()
    expect_errno(errno.ENOENT, ep.modify, other.fileno(), select.EPOLLIN)
    expect_errno(errno.ENOENT, ep.unregister, other.fileno())
    assert ep.poll(0) == []
    ok("epoll_ctl EEXIST ENOENT, idle listener not ready")

    assert cmd(f"connect {HOST} {port}") == "connected"
    evs = ep.poll(5)
    assert evs == [(L.fileno(), select.EPOLLIN)], evs
    C, peer = L.accept()
    assert peer[0] == PEER, peer
    assert C.getpeername()[0] == PEER and C.getsockname() == (HOST, port)
    expect_errno(errno.EAGAIN, L.accept)
    assert ep.poll(0) == []
    ok("epoll reports the accept exactly once (level, drained)")

    C.setblocking(False)
    expect_errno(errno.EAGAIN, C.recv, 10)
    ep.register(C.fileno(), select.EPOLLIN)
    assert ep.poll(0) == []
    assert cmd("send 0 ping") == "sent"
    evs = ep.poll(5)
    assert evs == [(C.fileno(), select.EPOLLIN)], evs
    assert ep.poll(0) == [(C.fileno(), select.EPOLLIN)]  # level: still readable
    assert C.recv(2, socket.MSG_PEEK) == b"pi"
    assert C.recv(100) == b"ping"
    assert ep.poll(0) == []  # exact: nothing left to read
    expect_errno(errno.EAGAIN, C.recv, 10)
    ok("level-triggered readiness is exact; MSG_PEEK")

    ep.modify(C.fileno(), select.EPOLLIN | select.EPOLLET)
    assert cmd("send 0 edge") == "sent"
    assert ep.poll(5) == [(C.fileno(), select.EPOLLIN)]
    assert ep.poll(0) == []  # edge: reported once though unread
    assert C.recv(100) == b"edge"
    ep.modify(C.fileno(), select.EPOLLIN | select.EPOLLONESHOT)
    assert cmd("send 0 once") == "sent"
    assert ep.poll(5) == [(C.fileno(), select.EPOLLIN)]
    assert cmd("send 0 more") == "sent"
    wait_queued(C, 8)
    assert ep.poll(0) == []  # one-shot: disabled until modified
    ep.modify(C.fileno(), select.EPOLLIN)
    assert ep.poll(1) == [(C.fileno(), select.EPOLLIN)]
    assert C.recv(100) == b"oncemore"
    ok("EPOLLET and EPOLLONESHOT")

    ep.modify(C.fileno(), select.EPOLLOUT)
    assert ep.poll(1) == [(C.fileno(), select.EPOLLOUT)]
    ep.unregister(C.fileno())
    ok("EPOLLOUT on a writable session")

    # select mixing a pipe (kernel fd) and a session
    r, w = os.pipe()
    os.write(w, b"x")
    rs, _, _ = select.select([r, C], [], [], 1)
    assert rs == [r], rs
    os.read(r, 1)
    assert cmd("send 0 sel") == "sent"
    rs, _, _ = select.select([r, C], [], [], 5)
    assert rs == [C], rs
    assert C.recv(10) == b"sel"
    p = select.poll(); p.register(C, select.POLLIN); p.register(r, select.POLLIN)
    assert p.poll(0) == []
    ok("select and poll mix kernel fds and sessions")

    # dup, close, FD_CLOEXEC
    d = os.dup(C.fileno())
    assert not os.get_inheritable(C.fileno())
    os.set_inheritable(C.fileno(), True)
    assert os.get_inheritable(C.fileno()) and not os.get_inheritable(d)
    C.close()
    os.write(d, b"dup!")
    assert cmd("recv 0 4") == "got dup!"
    ok("dup survives closing the original; FD_CLOEXEC per fd")

    # fork: the child closes its copies, the parent keeps the session and the listener
    pid = os.fork()
    if pid == 0:
        os.close(d); L.close(); os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    os.write(d, b"fork")
    assert cmd("recv 0 4") == "got fork"
    assert cmd(f"connect {HOST} {port}") == "connected"
    assert ep.poll(5) == [(L.fileno(), select.EPOLLIN)]
    C2, _ = L.accept()
    ok("a fork child closing its copies leaves the parent's session and listener")

    # closing the last fd closes the connection
    os.close(d)
    assert cmd("eof 0") == "eof"
    ok("closing the last fd sends FIN")

    # connect out: refused, non-blocking with SO_ERROR, and a working one
    s = socket.socket()
    expect_errno(errno.ECONNREFUSED, s.connect, (PEER, 1))
    s = socket.socket(); s.setblocking(False)
    expect_errno(errno.EINPROGRESS, s.connect, (PEER, 1))
    expect_errno(errno.EALREADY, s.connect, (PEER, 1))
    select.select([], [s], [], 5)
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    s = socket.create_connection((PEER, PEER_PORT), timeout=5)
    expect_errno(errno.EISCONN, s.connect, (PEER, PEER_PORT))
    s.sendall(b"hello out")
    got = b""
    while len(got) < 9:
        got += s.recv(100)
    assert got == b"hello out"
    s.close()
    ok("connect: ECONNREFUSED, EINPROGRESS, EALREADY, SO_ERROR, EISCONN, data")

    # EPIPE and SIGPIPE: a stream that was never connected
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        t = socket.socket()
        try:
            t.send(b"x", socket.MSG_NOSIGNAL)
            os._exit(3)
        except BrokenPipeError:
            pass
        t.send(b"x")
        os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGPIPE, status
    ok("EPIPE with MSG_NOSIGNAL, SIGPIPE without")

    # FIONREAD, FIONBIO, F_GETFL, sendmsg/recvmsg, readv/writev
    assert cmd("send 1 twelve-bytes") == "sent"
    wait_queued(C2, 12)
    fcntl.ioctl(C2.fileno(), termios.FIONBIO, array.array("i", [1]), False)
    assert fcntl.fcntl(C2.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    a, b = bytearray(6), bytearray(6)
    assert C2.recvmsg_into([a, b])[0] == 12 and bytes(a + b) == b"twelve-bytes"
    expect_errno(errno.EAGAIN, C2.recv, 1)
    assert C2.sendmsg([b"send", b"msg"]) == 7
    assert cmd("recv 1 7") == "got sendmsg"
    assert os.writev(C2.fileno(), [b"wri", b"tev"]) == 6
    assert cmd("recv 1 6") == "got writev"
    ok("FIONREAD, FIONBIO, F_GETFL, recvmsg/sendmsg, writev")

    # the peer closes: EPOLLIN|EPOLLRDHUP, then EOF
    ep.register(C2.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    assert cmd("close 1") == "closed"
    evs = ep.poll(5)
    assert evs and evs[0][1] & select.EPOLLRDHUP and evs[0][1] & select.EPOLLIN, evs
    C2.setblocking(True); C2.settimeout(5)
    assert C2.recv(10) == b""
    ok("peer close: EPOLLRDHUP, then EOF")

    # one port on 0.0.0.0 and on [::] (IPV6_V6ONLY): each family's
    # connections reach its own listener
    A = socket.socket(socket.AF_INET); A.bind(("0.0.0.0", 0)); A.listen(4)
    p2 = A.getsockname()[1]
    B = socket.socket(socket.AF_INET6)
    B.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    B.bind(("::", p2)); B.listen(4)
    assert cmd(f"connect {HOST6} {p2}") == "connected"
    assert cmd(f"connect {HOST} {p2}") == "connected"
    B.settimeout(5); A.settimeout(5)
    c6, a6 = B.accept(); c4, a4 = A.accept()
    assert ":" in a6[0] and "." in a4[0], (a6, a4)
    assert c6.getsockname()[0] == HOST6 and c4.getsockname()[0] == HOST
    ok("IPv4 and IPv6 listeners on one port each get their own family")

    # SO_REUSEPORT: two listeners on one endpoint share its connections;
    # a third without the option is EADDRINUSE
    def reuse():
        r = socket.socket(); r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); return r
    R1 = reuse(); R1.bind(("0.0.0.0", 0)); R1.listen(8)
    p3 = R1.getsockname()[1]
    R2 = reuse(); R2.bind(("0.0.0.0", p3)); R2.listen(8)
    R3 = socket.socket(); R3.bind(("0.0.0.0", p3))
    expect_errno(errno.EADDRINUSE, R3.listen, 8)
    for _ in range(4):
        assert cmd(f"connect {HOST} {p3}") == "connected"
    got = {R1: 0, R2: 0}
    deadline = time.time() + 5
    while sum(got.values()) < 4 and time.time() < deadline:
        rs, _, _ = select.select([R1, R2], [], [], 1)
        for r in rs:
            r.accept()[0].close(); got[r] += 1
    assert sum(got.values()) == 4 and min(got.values()) >= 1, got
    ok("SO_REUSEPORT listeners share one endpoint's connections")

    # listen() returns once the stack takes connections: a peer told at
    # once is never refused
    for _ in range(20):
        Q = socket.socket(); Q.bind(("0.0.0.0", 0)); Q.listen(1)
        assert cmd(f"connect {HOST} {Q.getsockname()[1]}") == "connected"
        Q.settimeout(5); Q.accept()[0].close(); Q.close()
    ok("a listener takes connections the moment listen() returns")
    print("all ok", flush=True)
finally:
    helper.kill()
