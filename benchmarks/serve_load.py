"""``reaudio serve`` under load, on loopback, with bounded request counts; and its fault runs.

    python benchmarks/serve_load.py load --json serve_load.json            # the default model
    python benchmarks/serve_load.py faults --json serve_faults.json
    python benchmarks/serve_load.py parity --json serve_parity.json       # step-level vs generate's audio
    python benchmarks/serve_load.py load --bundle B --requests 3 --clients 1 2   # a quick try

``load``: for each batching mode — one request at a time (one slot), request-level batching (four
slots; a batch waits up to 0.5 s to fill, then runs to its end), step-level batching (four slots;
requests join at the next step) — a fresh service, then 1, 2, 4 and 8 concurrent clients. Each client
sends its requests one after another with exponential (Poisson-process) gaps between the end of one
and the next (mean ``--think`` s), and waits for each clip on the events stream. Reported: clips/s
over the run and p50/p95/p99 latency (POST to the end event), beside a lone request's latency.

``faults``: the service killed with SIGKILL mid-load and started again (accepted jobs lost or
duplicated), 100 malformed requests (answers by class, and a clip made after them), and a cancel
during a run (how long until the waiting request takes the freed slot, beside one step's time).

``parity`` (in process, no HTTP): requests of different lengths joining a step-level batch at
different steps, against ``Engine.generate`` of each alone and of all of them in one batch of a
shape: the largest difference relative to the clip's peak.

Every clip asks for ``--duration`` seconds (default 4, the default model's window) so that clips
share a latent shape: step-level batching shares a graph call between rows of one shape.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from reaudio.client import Client, ServiceError

MODES = {"one at a time": ("step", 1), "request-level": ("request", 4), "step-level": ("step", 4)}
PROMPTS = [
    line.strip()
    for line in (Path(__file__).resolve().parents[1] / "examples" / "prompts.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(bundle, library: Path, slots: int, batching: str, extra=()) -> tuple[subprocess.Popen, Client]:
    port = _free_port()
    cmd = [sys.executable, "-m", "reaudio.engine.cli", "-q", "serve", "--library", str(library), "--port", str(port)]
    cmd += ["--slots", str(slots), "--batching", batching, "--stop-after", "3000", *extra]
    if bundle:
        cmd += ["--bundle", str(bundle)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = Client(f"http://127.0.0.1:{port}", timeout=30)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: {proc.stderr.read()[-3000:]}")
        try:
            client.health()
            return proc, client
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the service did not answer within 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_clients(client: Client, clients: int, per_client: int, args, seed: int) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def one_client(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        for i in range(per_client):
            time.sleep(rng.expovariate(1.0 / args.think) if args.think > 0 else 0.0)
            prompt = PROMPTS[(n * per_client + i) % len(PROMPTS)]
            t0 = time.perf_counter()
            try:
                job = client.submit(prompt, duration=args.duration, steps=args.steps, seed=1000 * n + i)
                client.wait(job["id"], timeout=1800)
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except (ServiceError, TimeoutError, OSError) as exc:
                with lock:
                    failures.append(str(exc)[:200])

    threads = [threading.Thread(target=one_client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies)
    return {
        "clients": clients,
        "requests": clients * per_client,
        "done": len(latencies),
        "failed": failures,
        "wall_s": round(wall, 2),
        "clips_per_s": round(len(latencies) / wall, 4),
        **{f"p{q}_s": round(float(np.percentile(lat, q)), 2) for q in (50, 95, 99)},
    }


def cmd_load(args) -> dict:
    rows = []
    lone = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, (batching, slots) in MODES.items():
            proc, client = start_service(args.bundle, Path(tmp) / name.replace(" ", "-"), slots, batching)
            try:
                run_clients(client, 1, 1, args, seed=99)  # warm-up: first calls allocate
                if lone is None:
                    lone = run_clients(client, 1, args.lone, args, seed=98)
                    print(f"lone request: p50 {lone['p50_s']} s", flush=True)
                for clients in args.clients:
                    per_client = max(1, -(-args.requests * max(1, clients // 2) // clients))
                    row = {"mode": name, **run_clients(client, clients, per_client, args, seed=clients)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                stop(proc)
    return {"lone": lone, "rows": rows}


def cmd_faults(args) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / "lib"
        out["kill"] = _kill_and_restart(args, library)
        proc, client = start_service(args.bundle, Path(tmp) / "lib2", 4, "step")
        try:
            out["malformed"] = _malformed(client, args)
            out["cancel"] = _cancel(client, args)
        finally:
            stop(proc)
    return out


def _kill_and_restart(args, library: Path) -> dict:
    proc, client = start_service(args.bundle, library, 4, "step")
    accepted = []
    try:
        for i in range(args.kill_jobs):
            prompt = PROMPTS[i % len(PROMPTS)]
            accepted.append(
                client.submit(prompt, duration=args.duration, steps=args.steps, seed=i, idempotency_key=f"k{i}")["id"]
            )
        client.wait(accepted[0], timeout=1800)
        left = sum(client.status(j)["status"] != "done" for j in accepted)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc, client = start_service(args.bundle, library, 4, "step")
    try:
        retried = [
            client.submit(
                PROMPTS[i % len(PROMPTS)], duration=args.duration, steps=args.steps, seed=i, idempotency_key=f"k{i}"
            )["id"]
            for i in range(args.kill_jobs)
        ]
        finals = [client.wait(j, timeout=1800)["status"] for j in accepted]
    finally:
        stop(proc)
    keys = [json.loads(line)["key"] for line in (library / "library.jsonl").read_text().splitlines()]
    return {
        "accepted": len(accepted),
        "unfinished_when_killed": left,
        "retries_answered_with_the_same_job": sum(a == b for a, b in zip(accepted, retried)),
        "done_after_restart": finals.count("done"),
        "lost": len(accepted) - finals.count("done"),
        "library_entries": len(keys),
        "duplicated": len(keys) - len(set(keys)),
    }


def _raw(client: Client, method: str, path: str, body: bytes | None, headers: dict) -> int:
    request = urllib.request.Request(client.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _malformed(client: Client, args) -> dict:
    rng = random.Random(7)
    js = {"Content-Type": "application/json"}
    makers = [
        lambda: (b"{not json", js),
        lambda: (b"[1,2,3]", js),
        lambda: (json.dumps({"prompt": "x", "steps": rng.choice([0, -5, 10**9, "many", 2.5])}).encode(), js),
        lambda: (json.dumps({"prompt": "x", "guidance": rng.choice(["high", {"a": 1}, [1]])}).encode(), js),
        lambda: (json.dumps({"prompt": "", "seed": 1}).encode(), js),
        lambda: (json.dumps({"prompt": "x", rng.choice(["colour", "path", "__class__"]): 1}).encode(), js),
        lambda: (json.dumps({"prompt": "x", "init_audio": "/etc/passwd"}).encode(), js),
        lambda: (json.dumps({"prompt": "x", "inpaint": rng.choice(["2:1", "a:b", [[1]]])}).encode(), js),
        lambda: (json.dumps({"prompt": "x" * 5000}).encode(), js),
        lambda: (json.dumps({"prompt": "x", "id": "../../etc/passwd"}).encode(), js),
        lambda: (b"prompt=x", {"Content-Type": "text/plain"}),
        lambda: (
            b"--zz\r\nContent-Disposition: form-data\r\n\r\n",
            {"Content-Type": "multipart/form-data; boundary=zz"},
        ),
        lambda: (b"\xff\xfe\x00garbage", js),
        lambda: (json.dumps({"prompt": "x", "pad": "y" * 100_000}).encode(), js),
    ]
    codes: dict[str, int] = {}
    for i in range(100):
        body, headers = makers[i % len(makers)]()
        code = _raw(client, "POST", "/v1/clips", body, headers)
        codes[str(code)] = codes.get(str(code), 0) + 1
    after = client.wait(client.submit("a door closes", duration=args.duration, steps=args.steps)["id"], timeout=1800)
    return {
        "sent": 100,
        "answers": codes,
        "4xx": sum(n for c, n in codes.items() if c.startswith("4")),
        "5xx": sum(n for c, n in codes.items() if c.startswith("5")),
        "served_after": after["status"],
    }


def _cancel(client: Client, args) -> dict:
    """Fill every slot with long jobs, queue one more, cancel a running one: the queued job's first
    step comes within about one step of the cancel."""
    long = [client.submit("a long drone", duration=args.duration, steps=400, seed=i)["id"] for i in range(4)]
    waiting = client.submit("a short click", duration=args.duration, steps=args.steps)["id"]
    while client.status(long[0])["progress"]["step"] < 5:
        time.sleep(0.05)
    s0, t0 = client.status(long[0])["progress"]["step"], time.perf_counter()
    time.sleep(3.0)
    step_s = (time.perf_counter() - t0) / max(1, client.status(long[0])["progress"]["step"] - s0)
    cancelled_at = time.perf_counter()
    client.cancel(long[0])
    while client.status(waiting)["progress"]["step"] < 1:
        time.sleep(0.01)
    started = time.perf_counter() - cancelled_at
    for job in long[1:]:
        client.cancel(job)
    return {
        "step_s": round(step_s, 3),
        "freed_slot_taken_after_s": round(started, 3),
        "within_steps": round(started / step_s, 2),
    }


def cmd_parity(args) -> dict:
    from reaudio.engine.bundle.default_model import resolve_bundle
    from reaudio.engine.pipeline import Engine, Request
    from reaudio.engine.step_batching import StepBatcher

    engine = Engine.from_bundle(resolve_bundle(args.bundle), backend="cpu")
    requests = [
        Request(prompt=PROMPTS[i], seed=i, duration=d, steps=args.steps)
        for i, d in enumerate((4.0, 4.0, 2.5, 4.0, 9.0))
    ]
    batcher = StepBatcher(engine, slots=4)
    tickets = []
    for request in requests:  # each joins two steps after the one before
        tickets.append(batcher.submit(request))
        batcher.tick()
        batcher.tick()
    batcher.run_until_idle()
    served = [t.future.result().waveform for t in tickets]
    alone = [engine.generate([r])[0].waveform for r in requests]
    four = [requests[i] for i in (0, 1, 3)]  # the 4-s ones, as generate batches them
    together = dict(zip((0, 1, 3), [r.waveform for r in engine.generate(four, batch_size=8)]))

    def relative(a, b) -> float:
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-9))

    return {
        "requests": [{"prompt": r.prompt, "duration": r.duration} for r in requests],
        "vs_alone": [relative(s, a) for s, a in zip(served, alone)],
        "vs_one_batch": {str(i): relative(served[i], w) for i, w in together.items()},
        "bit_identical_to_alone": [bool(np.array_equal(s, a)) for s, a in zip(served, alone)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("load", "faults", "parity"))
    parser.add_argument("--bundle", help="model bundle (default: the embedded default model)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=4, help="requests per client level, times clients/2 from 4 up")
    parser.add_argument("--lone", type=int, default=3, help="lone requests for the reference latency")
    parser.add_argument("--think", type=float, default=0.5, help="mean gap between a client's requests (s)")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--kill-jobs", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from reaudio.engine.jobs.bench import machine_info

    started = time.time()
    result = {"load": cmd_load, "faults": cmd_faults, "parity": cmd_parity}[args.what](args)
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        flags = next((line.split(":", 1)[1] for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx2")
    report = {
        "what": args.what,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine_info(), "flags": [f for f in wanted if f in flags.split()]},
        "seconds": round(time.time() - started, 1),
        **result,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
