"""Time to healthy, and one stream's speed through /v1 while the decode step compiles in the background.

usage: startup.py DATA_DIR PORT OUT.json  (the environment decides ASSISTANT_COMPILE_DECODE)"""
import json, os, subprocess, sys, time, urllib.request

data, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
B = f"http://127.0.0.1:{port}"
env = {**os.environ, "ASSISTANT_DATA_DIR": data, "ASSISTANT_PORT": str(port), "ASSISTANT_DEV_MODE": "1",
       "HF_HUB_OFFLINE": "1"}
log = open(out + ".log", "w")
t0 = time.time()
p = subprocess.Popen([sys.argv[4] if len(sys.argv) > 4 else "assistant", "serve", "--no-worker"], env=env, stdout=log, stderr=log)


def get(path, token=None, body=None, form=None):
    headers = {"content-type": "application/json"} if body is not None else {}
    data_ = json.dumps(body).encode() if body is not None else None
    if form is not None:
        data_ = "&".join(f"{k}={v}" for k, v in form.items()).encode()
        headers = {"content-type": "application/x-www-form-urlencoded"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(B + path, data=data_, headers=headers)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


try:
    while True:
        try:
            h = get("/healthz")
            if h.get("status") == "ok":
                break
        except Exception:
            pass
        if p.poll() is not None:
            raise SystemExit("server died")
        time.sleep(0.5)
    healthy = time.time() - t0
    get("/api/auth/register", body={"username": "timer", "password": "correct-horse-battery"})
    token = get("/api/auth/token", form={"username": "timer", "password": "correct-horse-battery"})["access_token"]
    model = get("/v1/models", token)["data"][0]["id"]
    rows, after_ready = [], 0
    think = float(os.environ.get("THINK_S", "0"))
    chat_for = float(os.environ.get("CHAT_FOR_S", "900"))
    while after_ready < 3 and time.time() - t0 < 1500:
        state = (get("/healthz").get("engine", {}).get("compiled_decode") or {}).get("state")
        if state == "compiling" and time.time() - t0 > chat_for:  # users gone: wait for it
            time.sleep(2)
            continue
        time.sleep(think)
        s = time.time()
        r = get("/v1/chat/completions", token, body={"model": model, "messages": [{"role": "user", "content": "Tell me about the history of tea in a few paragraphs."}],
                                                    "max_tokens": 64, "temperature": 0})
        dt = time.time() - s
        n = r["usage"]["completion_tokens"]
        state_after = (get("/healthz").get("engine", {}).get("compiled_decode") or {}).get("state")
        rows.append({"t": round(s - t0, 1), "state_before": state, "state_after": state_after, "tokens": n, "seconds": round(dt, 2), "tok_s": round(n / dt, 1)})
        print(rows[-1], flush=True)
        if state_before_ready := (state in (None, "ready", "failed") and state_after in (None, "ready", "failed")):
            after_ready += 1
    h = get("/healthz")
    json.dump({"healthy_s": round(healthy, 1), "requests": rows, "engine": h.get("engine")}, open(out, "w"), indent=1)
    print("healthy after", round(healthy, 1), "s")
finally:
    p.terminate(); p.wait(30)
