"""The nemesis of `hdfpay chaos` (after Jepsen's): faults on a schedule, chosen at random.

Kinds, each on the real processes of the loopback HA cluster (ledger/ha_cluster.py) and of
`hdfpay serve --workers N`:

    kill_worker    SIGKILL one authorizer worker; the supervisor starts another
    pause_primary  SIGSTOP the primary machine's Patroni and PostgreSQL for 2-8 s, then SIGCONT
                   (a stalled machine, within Patroni's 10 s lease: it must ride it out)
    kill_primary   SIGKILL the primary's postmaster; Patroni promotes the standby and brings
                   the old primary back as the standby by itself
    crash_primary  SIGKILL the primary's Patroni and postmaster (the machine is lost); the
                   standby takes over once the lease expires, then the old primary is restarted
                   as the new standby
    restart_etcd   SIGKILL etcd (Patroni's store) and start it again

and, only when asked for (--faults), two pauses beyond the lease, 11-14 s: pause_primary_long
(the machine) and pause_postgres (PostgreSQL alone, its Patroni running: a stuck disk). On this
Patroni (3.0.2) they can leave the bank without writes: the old primary's Patroni wakes with its
old view of the cluster, and either writes the leader key over the one the standby has just
taken (etcd3 _update_leader puts without comparing; the standby, promoted to a new timeline for
a second, steps down and can never stream from the old one again), or keeps failing to reassign
the synchronous standby ("Synchronous replication key updated by someone else", every second).
Strict synchronous mode then commits nothing, or the cluster cannot fail over, until an operator
steps in (seen 2026-12-05; loadtest/README.md).

The schedule: every kind once, in a random order, then kinds drawn at random until the run's
end; a pause between faults. After each fault the nemesis waits, bounded, until the bank serves
again: a leader with its synchronous standby, every worker up, and an approval of a purchase sent
after the fault. It measures how long no purchase was approved (the time without a primary, for
a failover) and when Patroni named a new leader. A fault the bank does not recover from within
RECOVERY_TIMEOUT_S stops the schedule and fails the run; the nemesis then does what the
operator's runbook says (reinitialise a replica that cannot follow the leader), and either way
the terminals settle what they can and the books are checked on the leader.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import asdict, dataclass

from ledger.embedded import child_processes
from ledger.ha_cluster import HaCluster, HaClusterError
from loadtest.chaos_till import Pulse

FAULT_KINDS = ("kill_worker", "pause_primary", "kill_primary", "crash_primary", "restart_etcd")
EXTRA_FAULT_KINDS = ("pause_primary_long", "pause_postgres")     # only when asked for: see above
ALL_FAULT_KINDS = FAULT_KINDS + EXTRA_FAULT_KINDS
# How long a paused primary stays stopped: within Patroni's 10 s lease (ttl, ledger/ha_cluster.py)
# with room for a loop, and beyond it.
PRIMARY_PAUSE_S = (2.0, 8.0)
LONG_PAUSE_S = (11.0, 14.0)
# Between the recovery from one fault and the next fault: the bank runs normally meanwhile.
FAULT_QUIET_S = (0.5, 2.0)
# From a fault to the bank serving again (measured: 2-25 s; a crash waits for the 10 s lease,
# then for the old primary's recovery and rewind).
RECOVERY_TIMEOUT_S = 120
# A crashed primary's lease expires after 10 s; past this, the old node is restarted anyway.
LEADER_CHANGE_TIMEOUT_S = 45
# The operator's reinitialisation of a replica (a fresh clone of a small database), then its
# catching up as the synchronous standby.
HEAL_TIMEOUT_S = 180
POLL_INTERVAL_S = 0.1


class NemesisError(RuntimeError):
    """A fault could not be applied (no leader, no worker): the message says which."""


@dataclass
class Fault:
    """One fault and what followed, in seconds from the fault (at `at_s` into the run)."""
    kind: str
    target: str
    at_s: float
    leader_before: str | None
    paused_s: float | None = None          # pause_primary: how long the primary was stopped
    new_leader_s: float | None = None      # until another node led (None: the leader stayed)
    no_approval_s: float | None = None     # until a purchase sent after the fault was approved
    recovered_s: float | None = None       # until leader, sync standby, workers and approvals
    leader_after: str | None = None
    error: str | None = None
    operator_action: str | None = None     # what the runbook did after a fault not recovered

    @property
    def failover(self) -> bool:
        return self.leader_after is not None and self.leader_after != self.leader_before

    def as_dict(self) -> dict:
        return {**asdict(self), "failover": self.failover}


class Nemesis:
    def __init__(self, cluster: HaCluster, supervisor_pid: int, workers_ready, pulse: Pulse,
                 rng: random.Random, kinds: tuple[str, ...], run_started: float) -> None:
        """`workers_ready()`: whether every worker of the supervisor serves (a coroutine)."""
        unknown = set(kinds) - set(ALL_FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"fault kinds are {', '.join(ALL_FAULT_KINDS)}; got {kinds}")
        self.cluster = cluster
        self.supervisor_pid = supervisor_pid
        self.workers_ready = workers_ready
        self.pulse = pulse
        self.rng = rng
        self.kinds = kinds
        self.run_started = run_started
        self.faults: list[Fault] = []

    def schedule(self):
        """Every kind once in a random order, then random kinds, for ever (the caller stops)."""
        first = list(self.kinds)
        self.rng.shuffle(first)
        yield from first
        while True:
            yield self.rng.choice(self.kinds)

    async def run(self, until: float) -> list[Fault]:
        """Apply faults until `until` (time.monotonic()), the first round always whole."""
        for number, kind in enumerate(self.schedule()):
            if number >= len(self.kinds) and time.monotonic() >= until:
                break
            await asyncio.sleep(self.rng.uniform(*FAULT_QUIET_S))
            fault = await self.apply(kind)
            self.faults.append(fault)
            print(_line(fault), flush=True)
            if fault.error:
                fault.operator_action = await self.heal()
                print(f"operator: {fault.operator_action}", flush=True)
                break
        return self.faults

    async def heal(self) -> str:
        """The runbook for a cluster left without a synchronous standby: reinitialise the
        replicas that do not follow, then wait (bounded) for leader and sync standby."""
        members = await asyncio.to_thread(self.cluster.members)
        stuck = [m["name"] for m in members if m["role"] == "replica"]
        try:
            for node in stuck:
                await asyncio.to_thread(self.cluster.reinitialize, node)
            leader, standby = await asyncio.to_thread(self.cluster.wait_ready, HEAL_TIMEOUT_S)
        except HaClusterError as exc:
            return f"reinitialised {', '.join(stuck) or 'nothing'}; still not healthy: {exc}"
        return (f"reinitialised {', '.join(stuck) or 'nothing'}: leader {leader}, "
                f"sync standby {standby} again")

    async def apply(self, kind: str) -> Fault:
        """Apply one fault, then wait for the recovery; every time is measured from the moment
        the fault struck (the postmaster killed, the processes stopped)."""
        leader = await asyncio.to_thread(self.cluster.leader)
        fault = Fault(kind, leader or "?", round(time.monotonic() - self.run_started, 3), leader)
        try:
            if leader is None:
                raise NemesisError("no leader to fault")
            struck = await getattr(self, f"_{kind}")(fault, leader)
            await self._recovery(fault, struck)
        except (NemesisError, HaClusterError, OSError) as exc:
            fault.error = str(exc)
        return fault

    async def _kill_worker(self, fault: Fault, leader: str) -> float:
        workers = sorted(child_processes(self.supervisor_pid))
        if not workers:
            raise NemesisError("the supervisor has no worker")
        victim = self.rng.choice(workers)
        fault.target = f"worker pid {victim}"
        struck = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while victim in child_processes(self.supervisor_pid):    # until the supervisor reaps it
            if time.monotonic() > struck + RECOVERY_TIMEOUT_S:
                raise NemesisError(f"worker {victim} still there after SIGKILL")
            await asyncio.sleep(POLL_INTERVAL_S)
        return struck

    async def _pause_primary(self, fault: Fault, leader: str) -> float:
        return await self._pause(fault, leader, PRIMARY_PAUSE_S, patroni=True)

    async def _pause_primary_long(self, fault: Fault, leader: str) -> float:
        return await self._pause(fault, leader, LONG_PAUSE_S, patroni=True)

    async def _pause_postgres(self, fault: Fault, leader: str) -> float:
        return await self._pause(fault, leader, LONG_PAUSE_S, patroni=False)

    async def _pause(self, fault: Fault, leader: str, lengths_s: tuple[float, float],
                     patroni: bool) -> float:
        fault.paused_s = round(self.rng.uniform(*lengths_s), 1)
        frozen = await asyncio.to_thread(self.cluster.freeze, leader, patroni=patroni)
        struck = time.monotonic()           # every process stopped: the pause starts now
        if not frozen:
            raise NemesisError(f"{leader}'s PostgreSQL is not running")
        try:
            await self._watch_leader(fault, struck, struck + fault.paused_s)
        finally:
            self.cluster.thaw(frozen)
        return struck

    async def _kill_primary(self, fault: Fault, leader: str) -> float:
        struck = time.monotonic()
        if await asyncio.to_thread(self.cluster.kill_postmaster, leader) is None:
            raise NemesisError(f"{leader}'s PostgreSQL is not running")
        return struck

    async def _crash_primary(self, fault: Fault, leader: str) -> float:
        await asyncio.to_thread(self.cluster.crash_node, leader)   # Patroni, then the postmaster
        struck = time.monotonic()
        await self._watch_leader(fault, struck, struck + LEADER_CHANGE_TIMEOUT_S,
                                 until_new_leader=True)
        await asyncio.to_thread(self.cluster.restart_node, leader)   # the new standby
        return struck

    async def _restart_etcd(self, fault: Fault, leader: str) -> float:
        fault.target = "etcd"
        struck = time.monotonic()
        await asyncio.to_thread(self.cluster.restart_etcd)
        return struck

    async def _watch_leader(self, fault: Fault, started: float, until: float,
                            until_new_leader: bool = False) -> None:
        """Until `until`, note when another node leads (and stop then, if asked)."""
        while time.monotonic() < until:
            self._note_leader(fault, await asyncio.to_thread(self.cluster.members), started)
            if until_new_leader and fault.new_leader_s is not None:
                return
            await asyncio.sleep(min(POLL_INTERVAL_S, max(0.0, until - time.monotonic())))

    def _note_leader(self, fault: Fault, members: list[dict], started: float) -> str | None:
        leader = next((m["name"] for m in members
                       if m["role"] == "leader" and m["state"] == "running"), None)
        if fault.new_leader_s is None and leader not in (None, fault.leader_before):
            fault.new_leader_s = round(time.monotonic() - started, 3)
        return leader

    async def _recovery(self, fault: Fault, started: float) -> None:
        """Until the bank serves again (bounded): leader and sync standby, every worker, and an
        approval of a purchase sent after the fault."""
        deadline = started + RECOVERY_TIMEOUT_S
        while True:
            members = await asyncio.to_thread(self.cluster.members)
            leader = self._note_leader(fault, members, started)
            standby = any(m["role"] == "sync_standby" and m["state"] in ("running", "streaming")
                          for m in members)
            approved = self.pulse.first_approval_after(started)
            if approved is not None and fault.no_approval_s is None:
                fault.no_approval_s = round(approved - started, 3)
            workers = await self.workers_ready()
            if leader and standby and approved is not None and workers:
                fault.leader_after = leader
                fault.recovered_s = round(time.monotonic() - started, 3)
                return
            if time.monotonic() > deadline:
                raise NemesisError(
                    f"not recovered {RECOVERY_TIMEOUT_S} s after {fault.kind}: leader {leader}, "
                    f"sync standby {standby}, approval {approved is not None}, "
                    f"every worker serving {workers}")
            await asyncio.sleep(POLL_INTERVAL_S)


def _line(fault: Fault) -> str:
    """One line per fault as it ends, for whoever watches the run."""
    if fault.error:
        return f"fault {fault.kind} on {fault.target} at {fault.at_s:.1f} s: FAILED: {fault.error}"
    paused = f", paused {fault.paused_s:.1f} s" if fault.paused_s else ""
    moved = (f", new leader {fault.leader_after} after {fault.new_leader_s:.2f} s"
             if fault.failover and fault.new_leader_s is not None else "")
    return (f"fault {fault.kind} on {fault.target} at {fault.at_s:.1f} s{paused}: no approval "
            f"for {fault.no_approval_s:.2f} s{moved}, recovered after {fault.recovered_s:.2f} s")
