"""Benchmark: do webhooks slow pushes down? 1,000 pushes with a slow receiver vs no webhook at all.

What it measures
    Two arms, each its own embedded registry (SQLite, WAL) in a temporary home, the same 1,000 distinct small
    PEFT LoRA checkpoints pushed by `Registry.push` in this process, spread over 10 repositories:
      1. none  no webhook, no dispatcher
      2. slow  a webhook for the namespace whose receiver (127.0.0.1) answers each delivery after --delay
               seconds (default 1.0), and a real `swiftreg webhook dispatch` process delivering meanwhile
               (claims, records and retries share the SQLite database with the pushes)
    The arms alternate in rounds (--rounds, default 4, of 250 pushes each) so machine noise falls on both.
    A push writes its events and deliveries in its own transaction and never waits on a receiver: what the
    slow arm adds is those rows and the dispatcher's short transactions.

Target (judged on this run)
    slow / none - 1 <= 5% (push wall time). Exit code 0 whether or not it is met (a benchmark, not a test).

Run (from the repository root):
    .venv/bin/python bench/webhooks.py
    .venv/bin/python bench/webhooks.py --pushes 200 --rounds 2        # quick smoke run
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.service import Registry  # noqa: E402
from tests.helpers.checkpoints import write_peft_lora  # noqa: E402

TARGET = 0.05


def slow_receiver(delay: float) -> tuple[ThreadingHTTPServer, list[int]]:
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(delay)
            count[0] += 1
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the slow receiver takes per delivery")
    parser.add_argument("--repos", type=int, default=10)
    args = parser.parse_args()
    os.environ["SWIFTREG_WEBHOOK_ALLOW_PRIVATE"] = "1"
    with tempfile.TemporaryDirectory(prefix="swiftreg-bench-webhooks-") as tmp:
        root = Path(tmp)
        print(f"writing {args.pushes} checkpoints ...", file=sys.stderr)
        folders = [write_peft_lora(root / "ckpt" / f"c{i}", seed=1000 + i) for i in range(args.pushes)]
        regs = {arm: Registry(home=root / arm) for arm in ("none", "slow")}
        receiver, delivered = slow_receiver(args.delay)
        hook = regs["slow"].add_webhook(f"http://127.0.0.1:{receiver.server_address[1]}/", "bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
        env.update(SWIFTREG_HOME=str(root / "slow"), SWIFTREG_WEBHOOK_ALLOW_PRIVATE="1")
        dispatcher = subprocess.Popen([sys.executable, "-m", "registry.cli", "webhook", "dispatch", "--poll", "0.2"],
                                      env=env, stderr=subprocess.DEVNULL)
        for reg in regs.values():  # warm both (schema, first imports) outside the timing
            reg.push(write_peft_lora(root / "warm", seed=1), "warm/x")
        seconds = {"none": 0.0, "slow": 0.0}
        per_round = args.pushes // args.rounds
        try:
            for r in range(args.rounds):
                batch = folders[r * per_round:(r + 1) * per_round]
                for arm in (("none", "slow") if r % 2 == 0 else ("slow", "none")):
                    started = time.perf_counter()
                    for i, folder in enumerate(batch):
                        regs[arm].push(folder, f"bench/m{(r * per_round + i) % args.repos}")
                    seconds[arm] += time.perf_counter() - started
                print(f"round {r + 1}/{args.rounds}: none {seconds['none']:.2f} s, slow {seconds['slow']:.2f} s so "
                      f"far; {delivered[0]} deliveries answered", file=sys.stderr)
            pending = regs["slow"].dispatcher().pending()
        finally:
            dispatcher.terminate()
            dispatcher.wait(30)
            receiver.shutdown()
        pushes = per_round * args.rounds
        slowdown = seconds["slow"] / seconds["none"] - 1
        print(f"{pushes} pushes, {args.repos} repositories, receiver delay {args.delay:.1f} s per delivery")
        print(f"  none: {seconds['none']:.2f} s ({seconds['none'] / pushes * 1000:.1f} ms per push)")
        print(f"  slow: {seconds['slow']:.2f} s ({seconds['slow'] / pushes * 1000:.1f} ms per push); "
              f"{delivered[0]} deliveries answered during the run, {pending} still queued (webhook {hook.id})")
        print(f"  slowdown {slowdown * 100:+.1f}% (target <= {TARGET * 100:.0f}%): "
              f"{'MET' if slowdown <= TARGET else 'MISSED'}")
        for reg in regs.values():
            reg.close()


if __name__ == "__main__":
    main()
