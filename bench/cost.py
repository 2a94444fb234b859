"""What one echo round trip costs the server: CPU time, context switches, system calls.

    .venv/bin/python bench/cost.py [--servers native,gevent,asyncio,plain,picows]
                                   [--conns 50] [--size 64] [--duration 5] [--rounds 3]
                                   [--syscalls] [--perf [--perf-data DIR]] [--callgrind]
                                   [--json out.json]

Each server of bench/echo.py runs as bench/echo.py runs it (``--http-socket``, one worker,
pinned to ``--server-cpu``); this process, pinned to ``--client-cpu``, is the load:
bench/client.py's connections and its ``count_round_trips``, which reads the serving
process (a uWSGI or gunicorn worker, or the peer's one process) in ``/proc`` as the
counting starts and as it ends. Per round trip: the CPU time in user space and in the
kernel (``utime``/``stime`` of ``/proc/PID/stat``, every thread's), and the voluntary and
involuntary context switches (``/proc/PID/task/*/status``, summed over the threads).
Unlike round trips per second, these move little with the machine's load: a server held
to one core makes about as many round trips as its CPU time per round trip allows.
``--syscalls`` runs the counting once more per server under ``perf stat -p`` (started as
the counting starts, stopped as it ends) with the system calls' tracepoints: system calls
per round trip, by call, and the reads that failed (nothing to read yet). ``--perf`` does
the same under ``perf record -g`` (``cpu-clock`` samples of every thread) and splits the
CPU time per round trip by where the samples are: the kernel, by the system call it is
serving (``kernel: other``: interrupts, faults, scheduling outside a call), else the file
of the innermost frame (libc, Python, greenlet, gevent/libev, uWSGI, uvloop, picows,
other). ``--callgrind`` starts each server once more under ``valgrind --tool=callgrind``
(as bench/deflate_callgrind.py does, without ``--master``) and counts the user-space
instructions per round trip, the counters zeroed as the counting starts and dumped as it
ends (callgrind slows the server: nearly every read finds a message waiting, so a server
that reads before it waits seldom waits there). The table gives the medians of the
``--rounds`` runs (the servers take turns) and the load average (of one minute, at the
start and the end of each run, averaged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvloop
from client import run as run_client
from deflate_callgrind import instructions, under_callgrind
from echo import HOST, ROOT, SERVERS, Server, csv_list, log_trouble, usable_cpus, uwsgi
from memory import serving_pid

MODE = "http-socket"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PERF_FREQUENCY = 2000
PERF_START = 0.5
PERF_TIMEOUT = 120.0


def own_child() -> int:
    """The one process this one started (the server)."""
    children = [
        int(pid)
        for task in Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    if len(children) != 1:
        raise RuntimeError(f"expected one child process, found {children}")
    return children[0]


def counters(pid: int) -> dict[str, float]:
    """CPU seconds (user, system) of process ``pid`` and its threads' context switches."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    figures = {"user": int(fields[11]) / CLOCK_TICKS, "system": int(fields[12]) / CLOCK_TICKS}
    figures |= {"voluntary": 0.0, "involuntary": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that has just ended
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    figures["voluntary"] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    figures["involuntary"] += int(line.split()[1])
    return figures


def load_average() -> float:
    """The machine's load average over the last minute."""
    return float(Path("/proc/loadavg").read_text().split()[0])


#: The system calls counted by name (``perf stat`` tracepoints); the rest are ``other``.
SYSCALLS = [
    "read", "write", "recvfrom", "sendto", "writev", "epoll_wait", "epoll_pwait",
    "epoll_ctl", "poll", "futex", "fcntl", "getpid", "mmap", "munmap",
]  # fmt: skip


def syscall_events() -> list[str]:
    """``perf stat``'s arguments: every system call, each of :data:`SYSCALLS`, and the
    reads that failed (``EAGAIN``: nothing to read yet)."""
    events = ["-e", "raw_syscalls:sys_enter"]
    for name in SYSCALLS:
        events += ["-e", f"syscalls:sys_enter_{name}"]
    for name in ("read", "recvfrom"):
        events += ["-e", f"syscalls:sys_exit_{name}", "--filter", "ret < 0"]
    return events


def parse_perf_stat(text: str) -> dict[str, int]:
    """The calls per system call of ``perf stat -x,``'s output (see :func:`syscall_events`):
    ``total``, each call, ``other``, and ``read failed`` (of read and recvfrom)."""
    calls = {"total": 0, "read failed": 0}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        count, event = int(fields[0]), fields[2]
        if event == "raw_syscalls:sys_enter":
            calls["total"] = count
        elif event.startswith("syscalls:sys_enter_"):
            calls[event.removeprefix("syscalls:sys_enter_")] = count
        elif event.startswith("syscalls:sys_exit_"):
            calls["read failed"] += count
    calls["other"] = calls["total"] - sum(calls.get(name, 0) for name in SYSCALLS)
    return calls


class PerfRun:
    """``perf`` on process ``pid`` (every thread), started by the first call and stopped
    by the second (a ``sample`` for ``count_round_trips``), which returns what
    :meth:`result` makes of the run; ``out`` is its output file."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """``perf`` and its arguments, but ``-p``."""
        raise NotImplementedError

    def result(self, err: bytes) -> dict[str, int]:
        """The figures of the run that just stopped (``err``: what perf said)."""
        raise NotImplementedError

    def __call__(self) -> dict[str, int]:
        """Start, or stop and return the figures."""
        if self.proc is None:
            self.proc = subprocess.Popen(
                [*self.command(), "-p", str(self.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(PERF_START)  # perf says nothing once it runs
            return {}
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=PERF_TIMEOUT)
        return self.result(err)


class Syscalls(PerfRun):
    """``perf stat`` of the process's system calls; the counts
    (:func:`parse_perf_stat`). Tracepoints count without stopping the process, unlike
    strace, which slows it so much that every read finds a message waiting."""

    def command(self) -> list[str]:
        """``perf stat`` of the system call tracepoints."""
        return ["perf", "stat", "-x,", "-o", str(self.out), *syscall_events()]

    def result(self, err: bytes) -> dict[str, int]:
        """The system calls counted, by name, and their ``total``."""
        calls = parse_perf_stat(self.out.read_text())
        if not calls["total"]:
            raise RuntimeError(f"perf stat counted nothing: {err.decode()[-500:]}")
        return calls


#: The part of the server a sample's innermost frame is in, by the file it is in.
PARTS = [
    ("libpython", "Python"), ("lib-dynload", "Python"), ("greenlet", "greenlet"),
    ("gevent", "gevent/libev"), ("uvloop", "uvloop"), ("picows", "picows"),
    ("bin/uwsgi", "uWSGI"), ("libc.so", "libc"),
]  # fmt: skip
LIBC_PREFIX = re.compile(r"^(?:_*GI_)?_*(?:libc_)?")
LIBC_WRAPPERS = {"send": "sendto", "recv": "recvfrom", "fcntl64_nocancel_adjusted": "fcntl"}
SYSCALL_FUNCTION = re.compile(r"^(?:__x64_sys|__se_sys|__do_sys|ksys|__sys)_(\w+)")


def part_of(frames: list[tuple[str, str]]) -> str:
    """Where a sample is: ``kernel: <system call>`` (or ``kernel: other``) for the kernel,
    else the part of :data:`PARTS` its innermost frame's file is in (``other``: none)."""
    if frames[0][1] == "[kernel.kallsyms]":
        names = [m.group(1) for sym, _ in frames if (m := SYSCALL_FUNCTION.match(sym))]
        if names:
            return f"kernel: {names[-1]}"  # the outermost: the call made, not a helper
        user = [sym for sym, w in frames if w != "[kernel.kallsyms]"]
        if user and any(sym.startswith("do_syscall_64") for sym, _ in frames):
            wrapper = LIBC_PREFIX.sub("", user[0])  # its wrapper in libc
            return "kernel: " + LIBC_WRAPPERS.get(wrapper, wrapper)
        return "kernel: other"
    return next((name for key, name in PARTS if key in frames[0][1]), "other")


def parse_perf_script(text: str) -> dict[str, int]:
    """Samples per part (:func:`part_of`) of ``perf script``'s output."""
    counts: dict[str, int] = {}
    for block in text.split("\n\n"):
        frames = []
        for line in block.splitlines()[1:]:
            # "    ffffffff821ed516 do_syscall_64+0x76 ([kernel.kallsyms])"
            words = line.split(None, 1)
            if len(words) == 2 and words[1].endswith(")"):
                symbol, _, where = words[1].rpartition(" (")
                frames.append((symbol.split("+0x")[0], where[:-1]))
        if frames:
            part = part_of(frames)
            counts[part] = counts.get(part, 0) + 1
    return counts


class Perf(PerfRun):
    """``perf record -g`` of the process; the samples per part of the server
    (:func:`part_of`)."""

    def command(self) -> list[str]:
        """``perf record`` with call graphs."""
        cmd = ["perf", "record", "-e", "cpu-clock", "-F", str(PERF_FREQUENCY), "-g"]
        return [*cmd, "-o", str(self.out)]

    def result(self, err: bytes) -> dict[str, int]:
        """The samples per part, from ``perf script``."""
        if b"Captured and wrote" not in err:  # its exit status after SIGINT is not 0
            raise RuntimeError(f"perf record failed: {err.decode()[-500:]}")
        script = subprocess.run(
            ["perf", "script", "-i", str(self.out)],
            capture_output=True, text=True, timeout=PERF_TIMEOUT, check=True,
        )  # fmt: skip
        return parse_perf_script(script.stdout)


class Callgrind:
    """Zeroes the counters of a process under callgrind at the first call and dumps them
    at the second, which returns the instructions between the two."""

    def __init__(self, pid: int, out: Path) -> None:
        """Count for ``pid``, whose callgrind dumps go to directory ``out``."""
        self.pid = pid
        self.out = out
        self.zeroed = False

    def __call__(self) -> int:
        """Zero the counters, or dump them and return the instructions since."""
        if not self.zeroed:
            self.zeroed = True
            subprocess.run(
                ["callgrind_control", "-z", str(self.pid)], check=True, capture_output=True
            )
            return 0
        return instructions(self.pid, self.out)


def run_once(
    url: str, args: argparse.Namespace, sample: Callable[[], Any]
) -> tuple[dict[str, Any], Any, Any]:
    """Count round trips with ``sample`` at both ends; the client's figures and samples."""
    got = uvloop.run(run_client(url, args.conns, args.size, args.warmup, args.duration, sample))
    if got.get("errors") or not got.get("round_trips"):
        raise RuntimeError(f"client failed: {got}")
    before, after = got.pop("samples")
    return got, before, after


def measure(
    server: Server, pid: int, port: int, round_: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One run on a started server: the costs per round trip (and, with ``--syscalls`` or
    ``--perf``, a second or third run's system calls or profile)."""
    url = f"ws://{HOST}:{port}{server.path}"
    load = load_average()
    got, before, after = run_once(url, args, lambda: counters(pid))
    trips = got["round_trips"]
    row: dict[str, Any] = {"server": server.name, "pid": pid, "round_trips": trips}
    row["rt_per_s"] = got["rt_per_s"]
    # A connection that made no round trip while counting: the server stalled, and the run
    # measures the stall, not the cost; kept, but left out of the medians.
    row["stalled_conns"] = got["stalled_conns"]
    for key in ("user", "system"):
        row[f"{key}_us"] = (after[key] - before[key]) / trips * 1e6
    row["cpu_us"] = row["user_us"] + row["system_us"]
    for key in ("voluntary", "involuntary"):
        row[f"{key}_cs"] = (after[key] - before[key]) / trips
    if args.syscalls:
        with tempfile.TemporaryDirectory(prefix="cost-syscalls-") as tmp:
            traced, _, calls = run_once(url, args, Syscalls(pid, Path(tmp) / "stat.txt"))
        per = {name: n / traced["round_trips"] for name, n in sorted(calls.items())}
        row["syscalls"] = per
    if args.perf:
        with tempfile.TemporaryDirectory(prefix="cost-perf-") as tmp:
            data = (args.perf_data or Path(tmp)) / f"{server.name}-{round_}.perf.data"
            _, _, samples = run_once(url, args, Perf(pid, data))
        total = sum(samples.values())
        # A part's share of the samples, as a share of the unperturbed run's CPU time.
        row["profile_us"] = {
            part: n / total * row["cpu_us"]
            for part, n in sorted(samples.items(), key=lambda item: -item[1])
        }
        row["profile_samples"] = total
    row["load_average"] = (load + load_average()) / 2
    return row


def count_instructions(server: Server, args: argparse.Namespace) -> float:
    """User-space instructions per round trip of ``server`` under callgrind (no
    ``--master``, so that the process counted is the one that serves)."""
    with (
        tempfile.TemporaryDirectory(prefix="cost-callgrind-") as tmp,
        under_callgrind(server, ROOT, Path(tmp)) as (pid, port),
    ):
        url = f"ws://{HOST}:{port}{server.path}"
        got, _, count = run_once(url, args, Callgrind(pid, Path(tmp)))
    per: float = count / got["round_trips"]
    print(f"{server.name:<16} {per:,.0f} instructions per round trip (callgrind)")
    return per


@contextlib.contextmanager
def started(
    server: Server, cpu: int | None, log: Path, notes: list[str]
) -> Iterator[tuple[int, int]]:
    """Run ``server`` as bench/echo.py does; yield its serving process and its port."""
    with uwsgi(server, MODE, cpu, log, [], notes) as port:
        yield serving_pid(own_child()), port


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each server's medians over its runs."""
    keys = ["rt_per_s", "user_us", "system_us", "cpu_us", "voluntary_cs", "involuntary_cs"]
    keys.append("load_average")
    out = []
    for name in dict.fromkeys(r["server"] for r in rows):
        runs = [r for r in rows if r["server"] == name and not r["stalled_conns"]]
        if not runs:
            continue
        med: dict[str, Any] = {"server": name, "runs": len(runs)}
        med |= {key: statistics.median(r[key] for r in runs) for key in keys}
        med["cpu_us_range"] = [min(r["cpu_us"] for r in runs), max(r["cpu_us"] for r in runs)]
        traced = [r["syscalls"] for r in runs if "syscalls" in r]
        if traced:
            names = sorted({n for calls in traced for n in calls})
            med["syscalls"] = {
                n: statistics.median(calls.get(n, 0.0) for calls in traced) for n in names
            }
        profiles = [r["profile_us"] for r in runs if "profile_us" in r]
        if profiles:
            parts = sorted({p for prof in profiles for p in prof})
            med["profile_us"] = {
                p: statistics.median(prof.get(p, 0.0) for prof in profiles) for p in parts
            }
        out.append(med)
    return out


def profile_table(rows: list[dict[str, Any]]) -> str:
    """The profiles of the summary as text: us per round trip in each part, by server."""
    profiled = [r for r in rows if "profile_us" in r]
    if not profiled:
        return ""
    totals: dict[str, float] = {}
    for r in profiled:
        for part, us in r["profile_us"].items():
            totals[part] = totals.get(part, 0.0) + us
    parts = sorted(totals, key=lambda p: (not p.startswith("kernel"), -totals[p]))
    w = max(10, *(len(r["server"]) + 1 for r in profiled))
    lines = [f"{'us per round trip':<24}" + "".join(f"{r['server']:>{w}}" for r in profiled)]
    for part in parts:
        cells = "".join(f"{r['profile_us'].get(part, 0.0):>{w}.2f}" for r in profiled)
        lines.append(f"{part:<24}{cells}")
    cells = "".join(f"{r['cpu_us']:>{w}.2f}" for r in profiled)
    lines.append(f"{'all (CPU time)':<24}{cells}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    """The summary as text: one line per server."""
    w = max(10, *(len(r["server"]) for r in rows))
    lines = [
        f"{'server':<{w}} {'runs':>4} {'rt/s':>8} {'user us':>8} {'sys us':>8} {'cpu us':>8}"
        f" {'(range)':>13} {'vol cs':>7} {'invol cs':>8} {'load':>5} {'instr':>7}"
        "  system calls / rt"
    ]
    for r in rows:
        low, high = r["cpu_us_range"]
        instr = f"{r['instructions']:,.0f}" if "instructions" in r else "-"
        calls = r.get("syscalls", {})
        shown = ", ".join(
            f"{n} {v:.2f}"
            for n, v in sorted(calls.items(), key=lambda item: -item[1])
            if v >= 0.005 and n != "total"
        )
        if calls:
            shown = f"{calls.get('total', 0.0):.2f}: {shown}"
        lines.append(
            f"{r['server']:<{w}} {r['runs']:>4} {r['rt_per_s']:>8,.0f} {r['user_us']:>8.2f}"
            f" {r['system_us']:>8.2f} {r['cpu_us']:>8.2f} {f'{low:.1f}-{high:.1f}':>13}"
            f" {r['voluntary_cs']:>7.3f} {r['involuntary_cs']:>8.3f}"
            f" {r['load_average']:>5.1f} {instr:>7}  {shown}"
        )
    return "\n".join(lines)


def main() -> int:
    """Measure every selected server ``--rounds`` times, in turns; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="native,gevent,asyncio,plain,picows")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before counting")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds counted per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--syscalls", action="store_true", help="also count system calls")
    parser.add_argument(
        "--callgrind", action="store_true", help="also count instructions under callgrind"
    )
    parser.add_argument("--perf", action="store_true", help="also profile with perf record")
    parser.add_argument(
        "--perf-data", type=Path, default=None, help="keep perf's data here (SERVER-ROUND...)"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    names = csv_list(str, args.servers)
    if unknown := set(names) - {s.name for s in SERVERS}:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    servers = [s for s in SERVERS if s.name in names]
    server_cpu, client_cpu = usable_cpus(args.server_cpu, args.client_cpu)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # the server's process pins itself
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    logdir = Path(tempfile.mkdtemp(prefix="cost-bench-"))
    for round_ in range(args.rounds):
        for server in servers:
            log = logdir / f"{server.name}-{round_}.log"
            try:
                with started(server, server_cpu, log, notes) as (pid, port):
                    rows.append(measure(server, pid, port, round_, args) | {"round": round_})
                r = rows[-1]
                if r["stalled_conns"]:
                    notes.append(
                        f"{server.name}, round {round_}: {r['stalled_conns']} connections"
                        f" stalled ({r['round_trips']} round trips): left out of the medians"
                    )
                print(
                    f"{server.name:<16} {r['rt_per_s']:>8,.0f} rt/s  cpu {r['cpu_us']:.2f} us"
                    f" (user {r['user_us']:.2f}, sys {r['system_us']:.2f})"
                    f"  cs {r['voluntary_cs']:.3f}+{r['involuntary_cs']:.3f}"
                    f"  load {r['load_average']:.1f}"
                )
            except RuntimeError as exc:
                notes.append(f"{server.name}, round {round_}: {exc}")
                print(notes[-1])
            if trouble := log_trouble(log):
                notes.append(f"{log.name}: " + " | ".join(trouble))
    medians = summary(rows)
    if args.callgrind:
        for server, row in zip(servers, medians, strict=True):
            try:
                row["instructions"] = count_instructions(server, args)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                notes.append(f"{server.name}, callgrind: {exc}")
    print()
    print(table(medians))
    if args.perf:
        print()
        print(profile_table(medians))
    for note in notes:
        print("note:", note)
    print(f"server logs: {logdir}")
    if args.json:
        meta = {key: getattr(args, key) for key in ("conns", "size", "warmup", "duration")}
        meta |= {"mode": MODE, "server_cpu": server_cpu, "client_cpu": client_cpu}
        report = {"meta": meta, "summary": medians, "runs": rows, "notes": notes}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if len(rows) == args.rounds * len(servers) else 1


if __name__ == "__main__":
    sys.exit(main())
