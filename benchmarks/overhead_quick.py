"""Quick look at call overhead: CerebrasClient vs a bare httpx call (same request, same decode)."""
import json, os, statistics, sys, tempfile, time
import httpx
d = tempfile.mkdtemp(); os.environ["LEDGER_HOME"] = d
import ledger
from ledger.testing import StandIn

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
body = {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hello there"}]}
with StandIn() as up:
    bare = httpx.Client(timeout=30)
    url = f"{up.base_url}/v1/chat/completions"
    hdr = {"authorization": "Bearer k", "content-type": "application/json"}
    client = ledger.CerebrasClient("bench", api_key="k", base_url=up.base_url, max_retries=0)
    a, b = [], []
    for i in range(200):
        bare.post(url, content=json.dumps(body).encode(), headers=hdr).json()
        client.chat.completions.create(**body)
    for i in range(N):
        t = time.perf_counter(); bare.post(url, content=json.dumps(body).encode(), headers=hdr).json(); a.append(time.perf_counter() - t)
        t = time.perf_counter(); client.chat.completions.create(**body); b.append(time.perf_counter() - t)
    client.flush(30)
    ma, mb = statistics.median(a), statistics.median(b)
    qa, qb = statistics.quantiles(a, n=100)[98], statistics.quantiles(b, n=100)[98]
    print(f"bare httpx median {ma*1e3:.3f} ms p99 {qa*1e3:.3f}; ledger median {mb*1e3:.3f} ms p99 {qb*1e3:.3f}; ratio {mb/ma:.3f} p99 {qb/qa:.3f}")
