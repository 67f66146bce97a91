"""On N ranks: a rank that dies (kill -9, out of memory) or raises ends the job within a
second, with one line on rank 0 naming the rank and the reason.

MPI itself cannot be asked: a collective with a dead peer may wait forever (or until the
launcher notices), and what the launcher prints (Open MPI's banner, MPICH Hydra's) does not
say what went wrong in Python. So the ranks keep a second line open, a plain TCP socket
from every rank to rank 0 (start(): rank 0 listens on a free port and broadcasts where;
whether every rank connected is agreed, else the watchdog is off with one note), and a
daemon thread on each end watches it:

    rank r -> rank 0   "fail <reason>"   r raised (Watchdog.fail: its type, message, place)
                       "quit <code>"     r ends the job itself (an error it alone saw)
                       "bye"             r ends as agreed (normal end, stop, agreed error)
                       end of stream     without "bye": r died ("ended without a word")
    rank 0 -> rank r   "stop <code>"     the job stops: r exits at once, quietly
                       "bye"             rank 0 ends as agreed
                       end of stream     without "bye": rank 0 died; rank 1 says so

The rank that speaks writes one line to the process's stderr (file descriptor 2, whatever
sys.stderr is) and every rank leaves with os._exit: no collective runs again, no
checkpoint is begun (checkpoint.save is atomic: the last good one stays loadable). One
process (size 1) gets Off: no thread, no socket.
"""
import contextlib
import os
import select
import socket
import sys
import threading
import time
import traceback

from . import checkpoint

CONNECT_TIMEOUT = 10.0     # s for a rank to reach rank 0's port
ANSWER_TIMEOUT = 5.0       # s a failing rank other than 0 waits for rank 0's "stop"
ROOT_GRACE = 0.5           # s rank 0's own exception waits: a peer's death speaks first
DIED = "ended without a word: killed (kill -9, out of memory) or crashed"


class Off:
    """The watchdog of one process, or of ranks that could not connect: does nothing."""
    active = False

    def bye(self): pass
    def quit(self, code): pass
    def fail(self, error, code=1): pass


def reason_of(error):
    """'ExcType: message (file:line)', on one line, the place being where it was raised."""
    text = " ".join(str(error).split()) or "(no message)"
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {text}{where}"


def about():
    """'pid P on host H': this process, as a failure's line names it."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def say(line):
    """line on file descriptor 2, at once (the non-root ranks' sys.stderr is os.devnull)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    try:
        os.write(2, ("\n" + line + "\n").encode(errors="replace"))
    except OSError:
        pass


def send(sock, line):
    try:
        sock.sendall((line + "\n").encode(errors="replace"))
        return True
    except OSError:
        return False


class Lines:
    """The lines read from a socket: feed() returns the complete ones, or None at its end."""

    def __init__(self, sock):
        self.sock, self.buffer = sock, b""

    def feed(self):
        try:
            chunk = self.sock.recv(4096)
        except OSError:
            chunk = b""
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode(errors="replace") for line in lines]


class Watchdog:
    """One end of the watch: Root (rank 0, a socket per peer) or Peer (its socket to 0).
    size: the job's number of ranks; kept(): what stays on disk, said with a failure."""
    active = True

    def __init__(self, rank, size, kept=None, exit=os._exit):
        self.rank, self.size, self.exit = rank, size, exit
        self.kept = kept or (lambda: "")
        self.speaking = threading.Lock()      # one line for the job, whoever finds the cause
        self.done = False

    def stop_line(self, who, whose, reason):
        """'error: rank R of N (pid P on H): reason; the job stops (what is kept)'."""
        kept = self.kept()
        return (f"error: rank {who} of {self.size} ({whose}): {reason}; the job stops"
                + (f" ({kept})" if kept else ""))


class Root(Watchdog):
    """Rank 0's end: peers maps rank -> (socket, 'pid P on host H')."""

    def __init__(self, peers, size, kept=None, exit=os._exit):
        super().__init__(0, size, kept, exit)
        self.peers = peers

    def watch(self):
        readers = {sock: (rank, Lines(sock)) for rank, (sock, _) in self.peers.items()}
        while readers and not self.done:
            ready, _, _ = select.select(list(readers), [], [], 1.0)
            for sock in ready:
                if self.done:                 # rank 0 said bye: the job ends as agreed
                    return
                rank, lines = readers[sock]
                got = lines.feed()
                for line in got or []:
                    word, _, rest = line.partition(" ")
                    if word == "bye":
                        del readers[sock]
                        break
                    if word == "fail":
                        self.report(rank, rest)
                    if word == "quit":
                        self.stop_all(int(rest or 1))
                if got is None and sock in readers:
                    self.report(rank, DIED)

    def stop_all(self, code, line=None):
        """Say line (if any), tell every peer "stop code", leave with code; only once."""
        if not self.speaking.acquire(blocking=False):
            time.sleep(3600)                  # the other thread is ending the process
        if line:
            say(line)
        for sock, _ in self.peers.values():
            send(sock, f"stop {code}")
        self.exit(code)

    def report(self, rank, reason):
        self.stop_all(1, self.stop_line(rank, self.peers[rank][1], reason))

    def fail(self, error, code=1):
        time.sleep(ROOT_GRACE)                # a dead peer (the likely cause) speaks first
        self.stop_all(code, self.stop_line(0, about(), reason_of(error)))

    def quit(self, code):
        self.done = True
        self.stop_all(code)

    def bye(self):
        self.done = True
        for sock, _ in self.peers.values():
            send(sock, "bye")


class Peer(Watchdog):
    """The end of rank r > 0: sock is its connection to rank 0."""

    def __init__(self, sock, rank, size, kept=None, exit=os._exit, root="rank 0"):
        super().__init__(rank, size, kept, exit)
        self.sock, self.root = sock, root       # root: 'pid P on host H' of rank 0
        self.stopped = threading.Event()

    def watch(self):
        lines = Lines(self.sock)
        while not self.done:
            got = lines.feed()
            for line in got or []:
                word, _, rest = line.partition(" ")
                if word == "stop":
                    self.speaking.acquire(blocking=False)
                    self.stopped.set()
                    self.exit(int(rest or 1))
                if word == "bye":
                    return
            if got is None:
                if not self.done and self.speaking.acquire(blocking=False):
                    if self.rank == 1:        # one line for the job: the first peer's
                        say(self.stop_line(0, self.root, DIED))
                    self.exit(1)
                return

    def fail(self, error, code=1):
        send(self.sock, f"fail {reason_of(error)}")
        answered = self.stopped.wait(ANSWER_TIMEOUT)   # rank 0's "stop" ends this process
        if not answered and self.speaking.acquire(blocking=False):
            say(f"error: rank {self.rank} of {self.size} ({about()}): {reason_of(error)}; "
                "rank 0 did not answer: the job stops")
        self.exit(code)

    def quit(self, code):
        self.done = True
        send(self.sock, f"quit {code}")

    def bye(self):
        self.done = True
        send(self.sock, "bye")


def start(world, kept=None, exit=os._exit):
    """Collective: the watchdog of this rank (Off on one process, or with one note on rank 0
    when some rank cannot reach rank 0's port). kept() -> what stays on disk (rank 0)."""
    if world.size == 1:
        return Off()
    listener = None
    if world.is_root:
        try:
            listener = socket.create_server(("", 0), backlog=world.size)
            where = (socket.gethostname(), listener.getsockname()[1], about())
        except OSError:
            where = None
    where = world.broadcast_object(where if world.is_root else None)
    sock = None
    if not world.is_root and where is not None:
        host = "127.0.0.1" if where[0] == socket.gethostname() else where[0]
        try:
            sock = socket.create_connection((host, where[1]), timeout=CONNECT_TIMEOUT)
            sock.settimeout(None)
            send(sock, f"hello {world.rank} {about()}")
        except OSError:
            sock = None
    reached = world.allgather(where is not None and (world.is_root or sock is not None))
    if not all(reached):
        for s in (listener, sock):
            if s is not None:
                s.close()
        if world.is_root:
            print(f"note: rank{'s' * (reached.count(False) > 1)} "
                  f"{', '.join(str(r) for r, ok in enumerate(reached) if not ok)} could not "
                  "reach rank 0 over TCP: a rank that fails ends the job as the MPI launcher "
                  "decides", file=sys.stderr)
        return Off()
    if not world.is_root:
        dog = Peer(sock, world.rank, world.size, kept, exit, root=where[2])
    else:
        dog = Root(accept(listener, world.size - 1), world.size, kept, exit)
    threading.Thread(target=dog.watch, name="rank-watchdog", daemon=True).start()
    return dog


def accept(listener, n):
    """rank -> (socket, 'pid P on host H') of the n peers that connected (hello lines)."""
    peers = {}
    listener.settimeout(CONNECT_TIMEOUT)
    with listener:
        for _ in range(n):
            sock, _ = listener.accept()
            sock.settimeout(CONNECT_TIMEOUT)
            hello = b""
            while not hello.endswith(b"\n"):    # byte by byte: what follows is the watch's
                chunk = sock.recv(1)
                if not chunk:
                    break
                hello += chunk
            sock.settimeout(None)
            _, rank, whose = hello.decode(errors="replace").strip().split(" ", 2)
            peers[int(rank)] = (sock, whose)
    return peers


def for_run(world, lock):
    """start(world, ...) for a training command whose run holds lock (run_guard.RunLock):
    the line says what --out_dir keeps, and the way out lets go of the lock first."""
    return start(world, lambda: kept(world, lock), lambda code: leave(lock, code))


def kept(world, lock):
    """What a failure leaves in --out_dir, as the line says it."""
    if not world.is_root:
        return "the last checkpoint rank 0 wrote is intact"
    out_dir = lock.path.parent if lock.path is not None else None
    last = checkpoint.last_iter(out_dir) if out_dir is not None else None
    return (f"last checkpoint: iteration {last} in {out_dir}, intact and loadable"
            if last is not None else "no checkpoint was written")


def leave(lock, code):
    """The way out: the run's lock let go of, then os._exit(code): no collective, no save,
    no atexit handler (MPI_Finalize would wait for a dead rank)."""
    with contextlib.suppress(Exception):
        lock.release()
    os._exit(code)
