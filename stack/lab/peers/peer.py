"""Kernel-side peers for hoststack's lab, tests and demo.

Runs inside the lab's network namespace on the Linux kernel's own TCP/UDP
stack. Every mode prints one JSON object on stdout and exits 0 only when
the data it got back is exactly what it sent.

  stream HOST PORT BYTES              send random bytes, read the echo, compare
  rr HOST PORT COUNT SIZE             COUNT request/response exchanges of SIZE bytes
  many HOST PORT CONNS BYTES          CONNS concurrent stream clients
  udp HOST PORT COUNT                 COUNT datagrams of varied sizes, boundaries checked
  udp-many HOST PORT SOCKETS COUNT    COUNT datagrams from each of SOCKETS sockets (source ports), all in flight together
  echo-server PORT [ONCE]             kernel TCP echo server (ONCE: exit after one client)
  udp-echo-server PORT                kernel UDP echo server
"""
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time


def connect(host, port, timeout=30.0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.time() + timeout
    while True:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            s.close()
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def stream_once(host, port, nbytes, chunk=1 << 20):
    c0 = time.perf_counter()
    s = connect(host, port)
    connect_secs = time.perf_counter() - c0
    block = os.urandom(min(nbytes, 4 << 20))
    sent_hash = hashlib.sha256()
    recv_hash = hashlib.sha256()
    got = [0]
    err = []

    def reader():
        try:
            while got[0] < nbytes:
                data = s.recv(1 << 20)
                if not data:
                    break
                recv_hash.update(data)
                got[0] += len(data)
        except OSError as e:
            err.append(str(e))

    t = threading.Thread(target=reader)
    start = time.perf_counter()
    t.start()
    off = 0
    sent = 0
    while sent < nbytes:
        n = min(chunk, nbytes - sent)
        piece = block[off:off + n]
        if len(piece) < n:
            off = 0
            piece = block[:n]
        # Vary the data between laps over the block so repeats are not
        # invisible to the hash comparison.
        if sent and off == 0:
            piece = bytes([sent & 0xff]) + piece[1:]
        s.sendall(piece)
        sent_hash.update(piece)
        sent += n
        off += n
    s.shutdown(socket.SHUT_WR)
    t.join()
    secs = time.perf_counter() - start
    s.close()
    ok = got[0] == nbytes and sent_hash.digest() == recv_hash.digest() and not err
    return {"bytes": nbytes, "received": got[0], "seconds": secs,
            "connect_seconds": connect_secs, "ok": ok,
            "sha256": recv_hash.hexdigest(), "error": err[0] if err else None}


def rr(host, port, count, size):
    s = connect(host, port)
    msg = bytes((i * 7) & 0xff for i in range(size))
    lat = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter_ns()
        s.sendall(msg)
        got = b""
        while len(got) < size:
            data = s.recv(size - len(got))
            if not data:
                raise RuntimeError(f"connection closed after {i} exchanges")
            got += data
        lat.append(time.perf_counter_ns() - t0)
        if got != msg:
            raise RuntimeError(f"exchange {i} came back different")
    secs = time.perf_counter() - start
    s.close()
    lat.sort()
    return {"count": count, "size": size, "seconds": secs, "rate": count / secs,
            "p50_us": lat[len(lat) // 2] / 1000, "p99_us": lat[int(len(lat) * 0.99)] / 1000, "ok": True}


def many(host, port, conns, nbytes):
    results = [None] * conns

    def one(i):
        try:
            results[i] = stream_once(host, port, nbytes, chunk=16384)
        except Exception as e:  # report, do not hang the others
            results[i] = {"ok": False, "error": str(e)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - start
    bad = [r for r in results if not r or not r["ok"]]
    return {"conns": conns, "bytes_each": nbytes, "seconds": secs, "ok": not bad,
            "failed": len(bad), "first_error": bad[0].get("error") if bad else None}


def udp(host, port, count):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    # IPv4 datagrams above the MTU travel as fragments (reassembled by
    # hoststack); IPv6 ones stay within the MTU (hoststack does not
    # reassemble IPv6 fragments).
    sizes = [1, 7, 64, 512, 1000, 1452] if fam == socket.AF_INET6 else [1, 7, 64, 512, 1472, 4000, 20000]
    ok = 0
    lost = 0
    for i in range(count):
        size = sizes[i % len(sizes)]
        payload = struct.pack("!I", i) + os.urandom(max(0, size - 4))
        payload = payload[:size]
        for _ in range(3):
            s.sendto(payload, (host, port))
            try:
                data, _ = s.recvfrom(65536)
            except socket.timeout:
                continue
            if data == payload:
                ok += 1
                break
            raise RuntimeError(f"datagram {i}: {len(data)} bytes came back for {len(payload)}")
        else:
            lost += 1
    return {"count": count, "echoed": ok, "lost": lost, "ok": ok == count}


def udp_many(host, port, sockets, count):
    """Datagrams from many source ports at once, each checked on return."""
    import selectors
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = []
    for _ in range(sockets):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((host, port))
        socks.append(s)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    expect = [dict() for _ in socks]
    def send(i, seq):
        size = 16 + (seq * 37 + i) % 1200
        payload = struct.pack("!II", i, seq) + os.urandom(size - 8)
        expect[i][seq] = payload
        socks[i].send(payload)
    for i in range(sockets):
        send(i, 0)
    nxt = [1] * sockets
    ok = 0
    bad = 0
    retries = 0
    deadline = time.time() + 60
    last = time.time()
    while ok < sockets * count and time.time() < deadline:
        events = sel.select(timeout=0.5)
        if not events:
            # Lost on the way (a full queue somewhere): send what is
            # outstanding again.
            for i in range(sockets):
                for seq, p in expect[i].items():
                    socks[i].send(p)
                    retries += 1
            continue
        for key, _ in events:
            i = key.data
            while True:
                try:
                    data = socks[i].recv(65536)
                except BlockingIOError:
                    break
                if len(data) < 8:
                    bad += 1
                    continue
                j, seq = struct.unpack("!II", data[:8])
                if j != i or expect[i].get(seq) != data:
                    if seq not in expect[i]:
                        continue  # a duplicate of a resent datagram
                    bad += 1
                    continue
                del expect[i][seq]
                ok += 1
                if nxt[i] < count:
                    send(i, nxt[i])
                    nxt[i] += 1
    ports = sorted(s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    return {"sockets": sockets, "count": count, "echoed": ok, "bad": bad,
            "resent": retries, "first_port": ports[0], "last_port": ports[-1],
            "ok": ok == sockets * count and bad == 0}


def echo_server(port, once):
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(256)
    print(json.dumps({"listening": port}), flush=True)

    def serve(c):
        with c:
            while True:
                data = c.recv(1 << 20)
                if not data:
                    return
                c.sendall(data)

    while True:
        c, _ = srv.accept()
        if once:
            serve(c)
            return {"ok": True}
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def udp_echo_server(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    print(json.dumps({"listening": port}), flush=True)
    while True:
        data, addr = s.recvfrom(65536)
        s.sendto(data, addr)


def main(argv):
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "stream":
        out = stream_once(argv[2], int(argv[3]), int(argv[4]))
    elif mode == "rr":
        out = rr(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif mode == "many":
        out = many(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif mode == "udp":
        out = udp(argv[2], int(argv[3]), int(argv[4]))
    elif mode == "udp-many":
        out = udp_many(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif mode == "udp-echo-server":
        out = udp_echo_server(int(argv[2]))
    elif mode == "echo-server":
        out = echo_server(int(argv[2]), len(argv) > 3 and argv[3] == "once")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
