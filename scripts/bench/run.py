#!/usr/bin/env python3
"""Benchmark driver behind scripts/bench.sh (standard library only).

Starts the fake Exchange (tests/fake-exchange) per scenario, runs `exchange-sync --once` (or the
daemon) into a temporary local sink and, for scenarios (a) and (b), the exchangelib reference
job (scripts/bench/exchangelib_job.py) against the same fake, measuring each run from outside:

- wall time: from start to exit of the client process;
- CPU: utime + stime of the client (wait4 rusage; for a daemon, /proc/PID/stat);
- peak RSS: VmHWM of the client's image, read from /proc every 20 ms until it exits (wait4's
  ru_maxrss is kept in the JSON as `wait4_maxrss` but not used: Linux carries the pre-exec
  high-water mark of the forked Python launcher into it, which puts a floor of about 25 MB
  under any client), and VmRSS sampled at the same time;
- the fake's own CPU over the run (/proc/FAKE/stat), since on 2 cores it competes;
- the fake's request counters (GET /_bench/stats, --bench-stats) before and after each run.

The ceiling of a run at latency L with C requests in flight is (C / L) x E emails/s:
`nominal` takes E = emails per GetItem (10, ews.md §4), `plan` takes E = emails / HTTP
requests that run actually made (FindFolder, FindItem, GetItem, NTLM legs: every request pays
the latency). Targets use the plan ceiling; both are printed.

Writes a JSON file with every run and prints a table.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
NTLM_USER = "BENCH\\bench:bench-pass"
GET_ITEM_BATCH = 10  # emails per GetItem with MIME (ews.md §4), both clients

# name -> full size, quick size. Sizes are per mailbox.
SCENARIOS = {
    "a": dict(
        title="(a) 20 mailboxes x 500 emails x 20 KB, 20 ms latency",
        full=dict(mailboxes=20, emails=500, mime=20_000, latency=20),
        quick=dict(mailboxes=10, emails=200, mime=20_000, latency=20),
        exchangelib=True,
    ),
    "b": dict(
        title="(b) same, 0 ms latency (CPU-bound)",
        full=dict(mailboxes=20, emails=500, mime=20_000, latency=0),
        quick=dict(mailboxes=10, emails=200, mime=20_000, latency=0),
        exchangelib=True,
    ),
    "c": dict(
        title="(c) one mailbox, 50,000 emails x 20 KB (control: 25,000)",
        full=dict(mailboxes=1, emails=50_000, mime=20_000, latency=0, control=25_000),
        quick=dict(mailboxes=1, emails=10_000, mime=20_000, latency=0, control=5_000),
    ),
    "d": dict(
        title="(d) 2,000 mailboxes x 5 emails: cost of a poll cycle",
        full=dict(mailboxes=2_000, emails=5, mime=4_000, latency=0, poll=15),
        quick=dict(mailboxes=400, emails=5, mime=4_000, latency=0, poll=6),
    ),
    "e": dict(
        title="(e) one 50 MB email among 200 small ones",
        full=dict(mailboxes=1, emails=200, mime=20_000, latency=0, big=50_000_000),
        quick=dict(mailboxes=1, emails=100, mime=20_000, latency=0, big=20_000_000),
    ),
    "f": dict(
        title="(f) idle daemon, 1,000 mailboxes, between polls",
        full=dict(mailboxes=1_000, emails=5, mime=4_000, latency=0, idle=20),
        quick=dict(mailboxes=300, emails=5, mime=4_000, latency=0, idle=10),
    ),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def proc_cpu(pid):
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_mem(pid):
    """(VmRSS, VmHWM) in bytes; (None, None) once the process is gone."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


class Fake:
    """One fake-exchange process, alive for a scenario."""

    def __init__(self, bin_dir, mailboxes, emails, mime, latency, big=0, threads=16):
        args = [
            os.path.join(bin_dir, "fake-exchange"),
            "--mailboxes", str(mailboxes),
            "--emails-per-mailbox", str(emails),
            "--mime-bytes", str(mime),
            "--latency-ms", str(latency),
            "--ntlm-user", NTLM_USER,
            "--threads", str(threads),
            "--bench-stats",
            "--exit-on-stdin-eof",
        ]
        if big:
            args += ["--big-email-bytes", str(big)]
        started = time.monotonic()
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.mailboxes = []
        self.url = None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("listening on "):
                self.url = line[len("listening on "):]
            elif line.startswith("mailbox "):
                self.mailboxes.append(line[len("mailbox "):])
            elif line.startswith("expect "):
                kv = dict(p.split("=") for p in line.split()[1:])
                self.expect_emails = int(kv["emails"])
                self.expect_bytes = int(kv["mime-bytes"])
            elif line == "ready":
                break
        else:
            raise RuntimeError("fake-exchange ended before it was ready")
        self.latency = latency
        self.startup_s = time.monotonic() - started
        # Keep draining its output.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.stats_url = self.url.rsplit("/EWS/", 1)[0] + "/_bench/stats"

    def stats(self):
        with urllib.request.urlopen(self.stats_url, timeout=30) as r:
            return json.loads(r.read())

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def rss(self):
        return proc_mem(self.proc.pid)[0]

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def stop_daemon(proc):
    """SIGTERM, and SIGKILL if it has not exited after 40 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stats_delta(before, after):
    ops = {
        k: after["operations"].get(k, 0) - before["operations"].get(k, 0)
        for k in after["operations"]
    }
    return {
        "http_requests": after["http_requests"] - before["http_requests"],
        "operations": {k: v for k, v in ops.items() if v},
        "ntlm_handshakes": after["ntlm_handshakes"] - before["ntlm_handshakes"],
        "get_item_ids": after["get_item_ids"] - before["get_item_ids"],
        "get_item_requests": after["get_item_requests"] - before["get_item_requests"],
    }


class Sampler(threading.Thread):
    """Samples a process's VmRSS every `period` seconds."""

    def __init__(self, pid, period=0.05):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.max_rss = 0
        self.hwm = 0
        self.timeline = []  # (seconds since start, VmRSS)
        self.done = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self.done.is_set():
            rss, hwm = proc_mem(self.pid)
            if rss is None:
                break
            self.timeline.append((time.monotonic() - t0, rss))
            self.max_rss = max(self.max_rss, rss)
            self.hwm = max(self.hwm, hwm or 0)
            self.done.wait(self.period)


def run_measured(cmd, env, fake, timeout):
    """Runs `cmd` to the end; returns the measurements (wait4 rusage, samples, fake CPU)."""
    s0, c0 = fake.stats(), fake.cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid, period=0.02)
    sampler.start()
    out = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    killer = threading.Timer(timeout, lambda: proc.kill())
    killer.start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.done.set()
    sampler.join(5)
    reader.join(10)
    c1 = fake.cpu()
    delta = stats_delta(s0, fake.stats())
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        # Popen returns once the child has exec'd, so every VmHWM the sampler read is the
        # client's own.
        "peak_rss": sampler.hwm,
        "wait4_maxrss": ru.ru_maxrss * 1024,
        "sampled_max_rss": sampler.max_rss,
        "rss_halves": halves(sampler.timeline),
        "fake_cpu_s": c1 - c0,
        "requests": delta,
        "output_tail": (out[0] if out else b"").decode(errors="replace")[-3000:],
    }


def halves(timeline):
    """Max VmRSS in the first and in the second half of a run: memory that grows with the
    number of emails processed shows as a second half above the first."""
    if len(timeline) < 4:
        return None
    mid = timeline[-1][0] / 2
    first = max(r for t, r in timeline if t <= mid)
    second = max(r for t, r in timeline if t > mid)
    return [first, second]


def count_docs(directory):
    """(documents, set of ids) of every *.jsonl below `directory`. Both clients write `id`
    first, so the id is read without parsing the (large) line."""
    n, ids = 0, set()
    for root, _, files in os.walk(directory):
        for name in files:
            if not name.endswith(".jsonl"):
                continue
            with open(os.path.join(root, name), "rb") as f:
                for line in f:
                    n += 1
                    m = re.match(rb'\{"id":\s*("(?:[^"\\]|\\.)*")', line)
                    ids.add(json.loads(m.group(1)) if m else None)
    return n, ids


def write_config(path, fake, mailboxes, extra):
    config = {
        "ews_endpoint": fake.url,
        "auth_type": "ntlm",
        "auth_user": NTLM_USER.split(":")[0],
        "auth_password": NTLM_USER.split(":")[1],
        "poll_message_sleep": 0,
        "mailboxes": {
            m: {
                "bucket": {"owner": "bench", "name": "emails"},
                "start_from": "bucket",
                "start_timestamp": "2000-01-01T00:00:00Z",
            }
            for m in mailboxes
        },
    }
    config.update(extra)
    with open(path, "w") as f:
        json.dump(config, f, indent=1)


class Bench:
    def __init__(self, args):
        self.args = args
        self.bin_dir = args.bin_dir
        self.client_bin = args.client or os.path.join(args.bin_dir, "exchange-sync")
        self.work = tempfile.mkdtemp(prefix="exchange-sync-bench-", dir=args.tmp)
        self.results = {
            "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "quick": args.quick,
            "repeat": args.repeat,
            "fetches": args.fetches,
            "client": self.client_bin,
            "source": source_state(os.path.dirname(os.path.dirname(self.client_bin))),
            "scenarios": {},
        }

    def cleanup(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def client_extra(self):
        extra = {"max_concurrent_fetches": self.args.fetches}
        if self.args.batch_size:
            extra["reinfer_batch_size"] = self.args.batch_size
        if self.args.uploads is not None:
            extra["max_concurrent_uploads"] = self.args.uploads
        extra.update(json.loads(self.args.config_extra))
        return extra

    def ours_once(self, fake, sink, mailboxes=None, check_ids=False, label="ours"):
        os.makedirs(sink, exist_ok=True)
        config = os.path.join(self.work, "config.json")
        write_config(config, fake, mailboxes or fake.mailboxes, self.client_extra())
        env = dict(os.environ, REINFER_EWS_CONFIG=config)
        cmd = [
            self.client_bin,
            "--once", "--debug-level", "0", "--local-files-prefix", sink,
        ]
        m = run_measured(cmd, env, fake, self.args.timeout)
        m["client"] = label
        m["emails"], ids = count_docs(os.path.join(sink, "data"))
        if check_ids:
            m["ids"] = ids
        return m

    def exchangelib(self, fake, out, check_ids=False):
        mbfile = os.path.join(self.work, "mailboxes.txt")
        with open(mbfile, "w") as f:
            f.write("\n".join(fake.mailboxes) + "\n")
        user, password = NTLM_USER.split(":")
        cmd = [
            self.args.python, os.path.join(os.path.dirname(__file__), "exchangelib_job.py"),
            "--url", fake.url, "--user", user, "--password", password,
            "--mailboxes-file", mbfile, "--out", out,
            "--workers", str(self.args.xl_workers), "--chunk-size", str(GET_ITEM_BATCH),
        ]
        m = run_measured(cmd, dict(os.environ), fake, self.args.timeout)
        m["client"] = "exchangelib"
        m["emails"], ids = count_docs(out)
        if check_ids:
            m["ids"] = ids
        return m

    def derive(self, m, fake, concurrency):
        emails = m["emails"]
        wall = m["wall_s"]
        m["emails_per_s"] = emails / wall if wall else 0
        m["mb_per_s"] = fake.expect_bytes / 1e6 / wall if wall and emails else 0
        m["cpu_ms_per_email"] = 1000 * m["cpu_s"] / emails if emails else None
        m["cpu_s_per_1000"] = 1000 * m["cpu_s"] / emails if emails else None
        m["concurrency"] = concurrency
        reqs = m["requests"]["http_requests"]
        m["emails_per_request"] = emails / reqs if reqs else None
        if fake.latency:
            per_s = concurrency / (fake.latency / 1000)
            m["ceiling_nominal"] = per_s * GET_ITEM_BATCH
            m["ceiling_plan"] = per_s * (emails / reqs) if reqs else None
            m["ratio_nominal"] = m["emails_per_s"] / m["ceiling_nominal"]
            m["ratio_plan"] = m["emails_per_s"] / m["ceiling_plan"] if reqs else None
        m["ok"] = m["rc"] == 0 and emails == fake.expect_emails
        return m

    def fake_for(self, size):
        log(f"   starting fake: {size}")
        return Fake(
            self.bin_dir, size["mailboxes"], size["emails"], size["mime"], size["latency"],
            big=size.get("big", 0),
        )

    # --- scenarios -------------------------------------------------------------------------

    def throughput(self, key, spec, size):
        """(a) and (b): ours and exchangelib, alternating, `repeat` times each."""
        fake = self.fake_for(size)
        runs = []
        try:
            for i in range(self.args.repeat):
                sink = os.path.join(self.work, f"{key}-ours-{i}")
                log(f"   run {i + 1}/{self.args.repeat}: exchange-sync")
                m = self.derive(self.ours_once(fake, sink, check_ids=i == 0), fake,
                                self.args.fetches)
                runs.append(m)
                if spec.get("exchangelib") and not self.args.no_exchangelib:
                    out = os.path.join(self.work, f"{key}-xl-{i}")
                    log(f"   run {i + 1}/{self.args.repeat}: exchangelib")
                    x = self.derive(self.exchangelib(fake, out, check_ids=i == 0), fake,
                                    self.args.xl_workers)
                    runs.append(x)
                    if i == 0:
                        x["same_ids_as_ours"] = x["ids"] == m["ids"]
                        shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(sink, ignore_errors=True)
        finally:
            fake.stop()
        for r in runs:
            r.pop("ids", None)
        return {"fake_startup_s": fake.startup_s, "expect_emails": fake.expect_emails,
                "expect_mime_bytes": fake.expect_bytes, "runs": runs}

    def big_mailbox(self, key, spec, size):
        """(c): peak RSS for the big mailbox and for a control 10x smaller."""
        out = {"runs": [], "control_runs": []}
        for label, emails in (("control_runs", size["control"]), ("runs", size["emails"])):
            fake = self.fake_for(dict(size, emails=emails))
            try:
                for i in range(self.args.repeat):
                    sink = os.path.join(self.work, f"{key}-{emails}-{i}")
                    log(f"   run {i + 1}/{self.args.repeat}: exchange-sync, {emails} emails")
                    m = self.derive(self.ours_once(fake, sink), fake, self.args.fetches)
                    out[label].append(m)
                    shutil.rmtree(sink, ignore_errors=True)
            finally:
                fake.stop()
            out["expect_emails" if label == "runs" else "control_expect"] = fake.expect_emails
        return out

    def daemon_cycles(self, fake, sink, size):
        """The daemon on a sink that already holds everything: CPU and requests of its poll
        cycles 3 and 4 (cycle 1 lists every folder, as after any start; a change time too fresh
        to be vouched for by the server's clock is confirmed by a second listing; from cycle 3
        on a poll costs what it costs for as long as nothing changes). Cycle ends are read from the fake's FindFolder counter (one
        per mailbox and cycle) when no request is in flight; the CPU does not move between
        cycles, so sampling anywhere in the pause is exact."""
        n = size["mailboxes"]
        config = os.path.join(self.work, "config-daemon.json")
        write_config(config, fake, fake.mailboxes,
                     dict(self.client_extra(), poll_frequency=size["poll"]))
        env = dict(os.environ, REINFER_EWS_CONFIG=config)
        cmd = [self.client_bin, "--debug-level", "0", "--local-files-prefix", sink]
        s0 = fake.stats()

        def find_folders():
            return fake.stats()["operations"].get("FindFolder", 0) - \
                s0["operations"].get("FindFolder", 0)

        def wait_cycles_done(cycles, proc):
            last, quiet_since = None, None
            deadline = time.monotonic() + self.args.timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {proc.returncode}")
                st = fake.stats()
                done = st["operations"].get("FindFolder", 0) - \
                    s0["operations"].get("FindFolder", 0) >= cycles * n
                if done and st["in_flight"] == 0:
                    if last == st["http_requests"]:
                        if time.monotonic() - quiet_since >= 0.5:
                            return st
                    else:
                        last, quiet_since = st["http_requests"], time.monotonic()
                time.sleep(0.1)
            raise RuntimeError(f"poll cycle {cycles} did not finish in time")

        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_cycles_done(2, proc)
            cpu0, st0 = proc_cpu(proc.pid), fake.stats()
            wait_cycles_done(4, proc)
            cpu1, st1 = proc_cpu(proc.pid), fake.stats()
            cycles = (find_folders() - 2 * n) / n
        finally:
            stop_daemon(proc)
        d = stats_delta(st0, st1)
        return {
            "client": "ours (daemon)",
            "rc": proc.returncode,
            "cycles": cycles,
            "cpu_s": cpu1 - cpu0,
            "cpu_ms_per_mailbox": 1000 * (cpu1 - cpu0) / (cycles * n),
            "requests_per_mailbox": d["http_requests"] / (cycles * n),
            "operations": d["operations"],
            "ok": proc.returncode == 0 and d["get_item_ids"] == 0,
        }

    def many_mailboxes(self, key, spec, size):
        """(d): CPU per mailbox for a first cycle (copies everything) and a second one (nothing
        new), each a separate `--once` run on the same sink (so they include starting the
        process and loading every mailbox's state), then the daemon's steady poll cycles on
        that sink."""
        fake = self.fake_for(size)
        out = {"runs": [], "second_cycle_runs": [], "daemon_runs": [],
               "mailboxes": size["mailboxes"]}
        try:
            for i in range(self.args.repeat):
                sink = os.path.join(self.work, f"{key}-{i}")
                log(f"   run {i + 1}/{self.args.repeat}: first cycle")
                m = self.derive(self.ours_once(fake, sink), fake, self.args.fetches)
                m["cpu_ms_per_mailbox"] = 1000 * m["cpu_s"] / size["mailboxes"]
                out["runs"].append(m)
                log(f"   run {i + 1}/{self.args.repeat}: second cycle (nothing new)")
                m2 = self.ours_once(fake, sink)
                m2["emails"] = m["emails"]  # the sink still holds the first cycle's
                m2["ok"] = m2["rc"] == 0 and m2["requests"]["get_item_ids"] == 0
                m2["cpu_ms_per_mailbox"] = 1000 * m2["cpu_s"] / size["mailboxes"]
                m2["requests_per_mailbox"] = m2["requests"]["http_requests"] / size["mailboxes"]
                out["second_cycle_runs"].append(m2)
                log(f"   run {i + 1}/{self.args.repeat}: daemon poll cycles 3 and 4 (nothing new)")
                out["daemon_runs"].append(self.daemon_cycles(fake, sink, size))
                shutil.rmtree(sink, ignore_errors=True)
        finally:
            fake.stop()
        out["expect_emails"] = fake.expect_emails
        return out

    def large_email(self, key, spec, size):
        """(e): peak RSS with one very large email."""
        fake = self.fake_for(size)
        out = {"runs": [], "big_email_bytes": size["big"]}
        try:
            for i in range(self.args.repeat):
                sink = os.path.join(self.work, f"{key}-{i}")
                log(f"   run {i + 1}/{self.args.repeat}: exchange-sync")
                out["runs"].append(self.derive(self.ours_once(fake, sink), fake,
                                               self.args.fetches))
                shutil.rmtree(sink, ignore_errors=True)
        finally:
            fake.stop()
        out["expect_emails"] = fake.expect_emails
        return out

    def idle_daemon(self, key, spec, size):
        """(f): the daemon with poll_frequency 300 s: wait for its first cycle to finish, then
        sample RSS and CPU over `idle` seconds between polls."""
        fake = self.fake_for(size)
        out = {"runs": [], "idle_window_s": size["idle"]}
        try:
            for i in range(self.args.repeat):
                sink = os.path.join(self.work, f"{key}-{i}")
                os.makedirs(sink)
                config = os.path.join(self.work, "config.json")
                write_config(config, fake, fake.mailboxes,
                             dict(self.client_extra(), poll_frequency=300))
                env = dict(os.environ, REINFER_EWS_CONFIG=config)
                cmd = [self.client_bin, "--debug-level", "0",
                       "--local-files-prefix", sink]
                log(f"   run {i + 1}/{self.args.repeat}: daemon, first cycle")
                s0 = fake.stats()
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                try:
                    # First cycle done: every expected email fetched, and no request for 1 s.
                    last, quiet_since = None, None
                    while time.monotonic() - t0 < self.args.timeout:
                        st = fake.stats()
                        d = stats_delta(s0, st)
                        if d["get_item_ids"] >= fake.expect_emails and st["in_flight"] == 0:
                            if last == st["http_requests"]:
                                if time.monotonic() - quiet_since >= 1.0:
                                    break
                            else:
                                last, quiet_since = st["http_requests"], time.monotonic()
                        time.sleep(0.1)
                    first_cycle = time.monotonic() - t0
                    time.sleep(1.0)  # let uploads and the state commit settle
                    cpu0, rss_before = proc_cpu(proc.pid), proc_mem(proc.pid)[0]
                    rss = []
                    fake_cpu0 = fake.cpu()
                    req0 = fake.stats()["http_requests"]
                    for _ in range(size["idle"] * 2):
                        time.sleep(0.5)
                        rss.append(proc_mem(proc.pid)[0])
                    cpu1 = proc_cpu(proc.pid)
                    hwm = proc_mem(proc.pid)[1]
                    idle_requests = fake.stats()["http_requests"] - req0
                    fake_cpu = fake.cpu() - fake_cpu0
                finally:
                    stop_daemon(proc)
                emails, _ = count_docs(os.path.join(sink, "data"))
                out["runs"].append({
                    "client": "ours (daemon)",
                    "rc": proc.returncode,
                    "first_cycle_s": first_cycle,
                    "emails": emails,
                    "idle_cpu_s": cpu1 - cpu0,
                    "idle_rss_max": max(rss),
                    "idle_rss_min": min(rss),
                    "rss_after_first_cycle": rss_before,
                    "peak_rss": hwm,
                    "idle_requests": idle_requests,
                    "fake_idle_cpu_s": fake_cpu,
                    "ok": proc.returncode == 0 and emails == fake.expect_emails,
                })
                shutil.rmtree(sink, ignore_errors=True)
        finally:
            fake.stop()
        out["expect_emails"] = fake.expect_emails
        return out

    def run(self, keys):
        handlers = {"a": self.throughput, "b": self.throughput, "c": self.big_mailbox,
                    "d": self.many_mailboxes, "e": self.large_email, "f": self.idle_daemon}
        for key in keys:
            spec = SCENARIOS[key]
            size = spec["quick" if self.args.quick else "full"]
            log(f"== {spec['title']}{' [quick]' if self.args.quick else ''}")
            before = loadavg()
            started = time.monotonic()
            result = handlers[key](key, spec, size)
            result.update(title=spec["title"], size=size, load_before=before,
                          load_after=loadavg(), seconds=time.monotonic() - started)
            self.results["scenarios"][key] = result
            evaluate(key, result)
            log(f"   load {before} -> {result['load_after']}; {result['seconds']:.0f} s")


def med(runs, field):
    values = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(values) if values else None


def evaluate(key, r):
    """Adds the medians and the verdict against the issue's targets."""
    runs = r["runs"]
    ours = [x for x in runs if x["client"] == "ours"]
    xl = [x for x in runs if x["client"] == "exchangelib"]
    summary = {}
    fields = ["wall_s", "emails_per_s", "mb_per_s", "cpu_s", "cpu_s_per_1000", "peak_rss",
              "fake_cpu_s", "ratio_plan", "ratio_nominal", "ceiling_plan", "ceiling_nominal",
              "emails_per_request"]
    for name, group in (("ours", ours), ("exchangelib", xl)):
        if group:
            summary[name] = {f: med(group, f) for f in fields}
            summary[name]["all_ok"] = all(x["ok"] for x in group)
            summary[name]["requests"] = group[0]["requests"]
    checks = []
    o, x = summary.get("ours"), summary.get("exchangelib")
    if key == "a":
        if o.get("ratio_plan") is not None:
            checks.append(("emails/s >= 80% of plan ceiling", o["ratio_plan"] >= 0.8,
                           f"{o['ratio_plan']:.0%} of {o['ceiling_plan']:.0f}/s "
                           f"(nominal {o['ratio_nominal']:.0%} of {o['ceiling_nominal']:.0f}/s)"))
        if x:
            speed = o["emails_per_s"] / x["emails_per_s"]
            mem = o["peak_rss"] / x["peak_rss"]
            checks.append((">= 5x exchangelib emails/s", speed >= 5, f"{speed:.1f}x"))
            checks.append(("<= 1/3 exchangelib peak RSS", mem <= 1 / 3, f"{mem:.2f}x"))
    elif key == "b":
        if x:
            speed = o["emails_per_s"] / x["emails_per_s"]
            cpu = o["cpu_s_per_1000"] / x["cpu_s_per_1000"]
            checks.append((">= 10x exchangelib emails/s", speed >= 10, f"{speed:.1f}x"))
            checks.append(("<= 1/10 exchangelib CPU per email", cpu <= 0.1, f"{cpu:.3f}x"))
    elif key == "c":
        peak = o["peak_rss"]
        control = med(r["control_runs"], "peak_rss")
        summary["control_peak_rss"] = control
        checks.append(("peak RSS <= 64 MB", peak <= 64 * MIB, f"{peak / MIB:.1f} MiB"))
        growth = peak - control
        checks.append(("peak RSS not growing with mailbox size (2x emails: <= +10% or 4 MiB)",
                       growth <= max(4 * MIB, 0.1 * control),
                       f"{control / MIB:.1f} -> {peak / MIB:.1f} MiB"))
        halves_ = [x["rss_halves"] for x in ours if x.get("rss_halves")]
        if halves_:
            first = statistics.median(h[0] for h in halves_)
            second = statistics.median(h[1] for h in halves_)
            summary["rss_first_half"], summary["rss_second_half"] = first, second
            checks.append(("RSS flat within the run (2nd half max <= 1st half max + 10% or 4 MiB)",
                           second - first <= max(4 * MIB, 0.1 * first),
                           f"{first / MIB:.1f} -> {second / MIB:.1f} MiB"))
    elif key == "d":
        first = med(runs, "cpu_ms_per_mailbox")
        second = med(r["second_cycle_runs"], "cpu_ms_per_mailbox")
        summary["cpu_ms_per_mailbox_first"] = first
        summary["cpu_ms_per_mailbox_second"] = second
        summary["requests_per_mailbox_second"] = med(r["second_cycle_runs"],
                                                     "requests_per_mailbox")
        summary["second_cycle_wall_s"] = med(r["second_cycle_runs"], "wall_s")
        summary["second_all_ok"] = all(x["ok"] for x in r["second_cycle_runs"])
        daemon = med(r["daemon_runs"], "cpu_ms_per_mailbox")
        summary["cpu_ms_per_mailbox_daemon"] = daemon
        summary["requests_per_mailbox_daemon"] = med(r["daemon_runs"], "requests_per_mailbox")
        summary["daemon_all_ok"] = all(x["ok"] for x in r["daemon_runs"])
        checks.append(("<= 1 ms CPU per mailbox per cycle (daemon, steady poll cycles)",
                       daemon <= 1.0,
                       f"{daemon:.2f} ms, {summary['requests_per_mailbox_daemon']:.1f} requests "
                       f"per mailbox (--once runs, process start and state load included: "
                       f"first cycle {first:.2f} ms, second {second:.2f} ms)"))
    elif key == "e":
        limit = 3 * r["big_email_bytes"] + 32 * MIB
        peak = o["peak_rss"]
        checks.append(("peak RSS <= 3 x largest email + 32 MB", peak <= limit,
                       f"{peak / MIB:.1f} MiB (limit {limit / MIB:.1f} MiB)"))
    elif key == "f":
        idle_rss = med(runs, "idle_rss_max")
        idle_cpu = med(runs, "idle_cpu_s")
        summary["ours"] = {"idle_rss_max": idle_rss, "idle_cpu_s": idle_cpu,
                           "peak_rss": med(runs, "peak_rss"),
                           "first_cycle_s": med(runs, "first_cycle_s"),
                           "idle_requests": med(runs, "idle_requests"),
                           "all_ok": all(x["ok"] for x in runs)}
        checks.append(("<= 20 MB RSS between polls", idle_rss <= 20 * MIB,
                       f"{idle_rss / MIB:.1f} MiB"))
        checks.append(("no measurable CPU between polls", idle_cpu <= 1 / CLK_TCK,
                       f"{idle_cpu:.2f} s over {r['idle_window_s']} s"))
    all_ok = all(v.get("all_ok", True) for v in summary.values() if isinstance(v, dict))
    all_ok = all_ok and summary.get("second_all_ok", True) and summary.get("daemon_all_ok", True)
    checks.append(("every run copied exactly the expected emails", all_ok, ""))
    if x and "same_ids_as_ours" in xl[0]:
        checks.append(("exchangelib copied the same ids as ours", xl[0]["same_ids_as_ours"], ""))
    r["summary"] = summary
    r["checks"] = [{"target": t, "pass": bool(p), "value": v} for t, p, v in checks]
    for c in r["checks"]:
        log(f"   {'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['value']}")


def source_state(_target_dir):
    """The commit and the modified files of the checkout this script belongs to (the binary
    measured is built from it unless --client says otherwise)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src",
                                "Cargo.toml", "Cargo.lock"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        return {"head": head, "modified": [line[3:] for line in dirty if line.strip()]}
    except (OSError, subprocess.SubprocessError):
        return {}


def machine():
    info = {"cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
        info["kernel"] = os.uname().release
    except OSError:
        pass
    return info


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "MiB":
        return f"{v / MIB:.1f}"
    if unit == "%":
        return f"{v:.0%}"
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
    return str(v)


def print_table(results, stream=sys.stdout):
    w = stream.write
    src = results.get("source", {})
    w(f"\nclient {results.get('client')}; checkout {src.get('head', '?')}"
      f"{' with uncommitted changes in ' + str(len(src['modified'])) + ' files' if src.get('modified') else ''}; "
      f"max_concurrent_fetches {results.get('fetches')}; {results.get('repeat')} runs each, medians\n")
    w("\n| scenario | client | wall s | emails/s | MB/s | CPU s /1k emails | peak RSS MiB "
      "| ceiling (plan) | ratio | fake CPU s |\n")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for key, r in results["scenarios"].items():
        for name, s in r["summary"].items():
            if not isinstance(s, dict) or "wall_s" not in s:
                continue
            w(f"| {key} | {name} | {fmt(s['wall_s'])} | {fmt(s['emails_per_s'])} | "
              f"{fmt(s['mb_per_s'])} | {fmt(s['cpu_s_per_1000'])} | {fmt(s['peak_rss'], 'MiB')} | "
              f"{fmt(s['ceiling_plan'])} | {fmt(s['ratio_plan'], '%')} | "
              f"{fmt(s['fake_cpu_s'])} |\n")
    w("\n| scenario | target | result | value |\n|---|---|---|---|\n")
    for key, r in results["scenarios"].items():
        for c in r["checks"]:
            w(f"| {key} | {c['target']} | {'PASS' if c['pass'] else 'FAIL'} | {c['value']} |\n")
    w("\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    p = argparse.ArgumentParser(description="exchange-sync benchmark driver")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--scenario", default="abcdef", help="letters, e.g. 'ab' or 'a,c'")
    p.add_argument("--repeat", type=int, default=2, help="runs per scenario (median reported)")
    p.add_argument("--fetches", type=int, default=8, help="max_concurrent_fetches (1-27)")
    p.add_argument("--batch-size", type=int, default=0, help="reinfer_batch_size (0: default)")
    p.add_argument("--uploads", type=int, default=None,
                   help="max_concurrent_uploads (default: exchange-sync's default)")
    p.add_argument("--config-extra", default="{}", help="more config keys, as JSON")
    p.add_argument("--xl-workers", type=int, default=8, help="exchangelib threads/connections")
    p.add_argument("--no-exchangelib", action="store_true")
    p.add_argument("--bin-dir", default=os.path.join(root, "target", "release"))
    p.add_argument("--client", default=None,
                   help="exchange-sync binary to measure (default: BIN_DIR/exchange-sync), for A/B runs")
    p.add_argument("--python", default=os.path.join(root, ".bench-venv", "bin", "python"))
    p.add_argument("--tmp", default=None, help="where the temporary sinks go (default: $TMPDIR)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per client run")
    p.add_argument("--json", default=None, help="write all measurements here")
    args = p.parse_args()
    keys = [k for k in args.scenario.replace(",", "") if k in SCENARIOS]
    if not keys:
        p.error(f"--scenario: pick from {''.join(SCENARIOS)}")
    if not 1 <= args.fetches <= 27:
        p.error("--fetches must be 1..27 (EWSMaxConcurrency is 27; ews.md §5.3)")
    bench = Bench(args)
    try:
        bench.run(keys)
    finally:
        bench.cleanup()
    results = bench.results
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
        log(f"measurements written to {args.json}")
    print_table(results)
    failed = [c for r in results["scenarios"].values() for c in r["checks"] if not c["pass"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
