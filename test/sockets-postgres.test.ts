// Issue 13, postgres (Debian `postgresql`): initdb in a temp dir, a private port, its Unix socket
// in the temp dir. A psql session outside the app inserts rows; checkpoint while it is connected,
// more rows after, kill -9 of the whole server (postmaster, checkpointer, walwriter, autovacuum,
// the session's backend...), restore: the server accepts new sessions and holds exactly the rows
// of the checkpoint (its data files are rolled back with it), and takes new writes. Every child
// waits on a signalfd in an epoll set (its latch), so this also covers signalfd (FD kind 15).
//
// Started the Debian way, as root through `runuser -u postgres --`: runuser (root) stays as the app's
// main process, its child becomes the postgres user and execs the postmaster, whose processes all
// run as postgres; each comes back as postgres (docs/engine.md, "Processes of another user"). Every
// wait is on a condition.
import assert from "node:assert/strict";
import { execFile, execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { waitFor } from "./helpers/home.js";
import { checkpointOk, crashAndRestore, others, setup } from "./helpers/tree.js";
import { freePort } from "./helpers/net.js";

const TIMEOUT = 1_800_000; // per describe block: generous for a busy machine; every wait inside is on a condition

/** The newest Debian postgresql's bin directory, or null. */
function pgBin(): string | null {
  try {
    const v = readdirSync("/usr/lib/postgresql").filter((d) => existsSync(`/usr/lib/postgresql/${d}/bin/postgres`)).sort((a, b) => Number(b) - Number(a))[0];
    return v ? `/usr/lib/postgresql/${v}/bin` : null;
  } catch {
    return null;
  }
}

function postgresUid(): { uid: number; gid: number } | null {
  try {
    return { uid: Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" })), gid: Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" })) };
  } catch {
    return null;
  }
}

/** The effective uid of a process (its status's Uid line); null once it is gone (a backend that ended meanwhile). */
function uidOf(hostPid: number): string | null {
  try {
    return /^Uid:\s+\d+\s+(\d+)/m.exec(readFileSync(`/proc/${hostPid}/status`, "utf8"))?.[1] ?? "?";
  } catch {
    return null;
  }
}

function sql(port: number, q: string): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile("psql", ["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", q], { timeout: 60_000 }, (e, out, err) =>
      e ? reject(new Error(`psql ${q}: ${err || e.message}`)) : resolve(out.trim()),
    ),
  );
}

const skip = process.getuid?.() !== 0 ? "needs root (tardigrade run does)" : !pgBin() ? "postgresql is not installed (Debian package postgresql)" : !postgresUid() ? "no postgres user" : false;

describe("issue 13: postgres", { timeout: TIMEOUT }, () => {
  test("a psql session inserting rows; checkpoint, kill -9 the whole server, restore: new sessions see exactly the checkpoint's rows; then the same again from the restored server", { skip }, async (t) => {
    const { h, dir } = setup(t);
    const bin = pgBin()!;
    const pg = postgresUid()!;
    chmodSync(dir, 0o755);
    const data = join(dir, "data");
    mkdirSync(data);
    chownSync(data, pg.uid, pg.gid);
    execFileSync("runuser", ["-u", "postgres", "--", join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"], { stdio: "ignore" });
    const port = await freePort();
    // shared_buffers under the 64 MiB a shared mapping is copied within the cut (README Limits)
    const r = await h.cli(["run", "--name", "pg", "--json", "--", "runuser", "-u", "postgres", "--", join(bin, "postgres"), "-D", data, "-p", String(port), "-k", data, "-c", "listen_addresses=127.0.0.1", "-c", "shared_buffers=16MB", "-c", "fsync=off"]);
    assert.equal(r.code, 0, r.stderr);
    await waitFor("postgres accepts sessions", () => sql(port, "select 1").then((o) => o === "1", () => false), 180_000, 200);
    await sql(port, "create table t (x int)");

    // a session outside the app, inserting rows
    const psql = spawn("psql", ["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", "postgres"], { stdio: ["pipe", "pipe", "inherit"] });
    t.after(() => {
      if (psql.exitCode === null && psql.signalCode === null) psql.kill("SIGKILL");
    });
    let out = "";
    psql.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
    const insert = async (from: number, to: number): Promise<void> => {
      psql.stdin!.write(`insert into t select generate_series(${from}, ${to}); select 'done ${to}';\n`);
      await waitFor(`rows up to ${to} inserted`, () => out.includes(`done ${to}`));
    };
    await insert(1, 100);
    await insert(101, 200);
    const id = await checkpointOk(h, "pg");
    await insert(201, 300); // after the checkpoint: gone after the restore
    assert.equal(await sql(port, "select count(*), sum(x) from t"), "300|45150");
    const ins = await h.cli(["inspect", id]);
    assert.match(ins.stdout, /process tree of \d+ processes/, ins.stdout);
    // the children's latches: a signalfd each (FD kind 15)
    let signalfds = 0;
    for (const child of ins.stdout.match(/pg~\d+@\d+/g) ?? []) if (/signalfd +\S+ +\d+ +signalfd for signals? [\d, ]+/.test((await h.cli(["inspect", child])).stdout)) signalfds++;
    assert.ok(signalfds >= 2, `children with a signalfd: ${signalfds}\n${ins.stdout}`);
    const uids = (): Map<number, string> =>
      new Map(
        others(h, "pg")
          .filter((p) => !p.zombie)
          .flatMap((p) => {
            const u = uidOf(p.hostPid);
            return u === null ? [] : [[p.pid, u] as [number, string]];
          }),
      );
    const before = uids();
    assert.ok([...before.values()].filter((u) => u === String(pg.uid)).length >= 3, `the postgres processes run as uid ${pg.uid}: ${JSON.stringify([...before])}`);

    await crashAndRestore(h, "pg");
    await waitFor("the restored postgres accepts sessions", () => sql(port, "select 1").then((o) => o === "1", () => false), 180_000, 200);
    const after = uids();
    for (const [pid, uid] of before) if (after.has(pid)) assert.equal(after.get(pid), uid, `process ${pid} runs as uid ${uid} again`);
    assert.equal(await sql(port, "select count(*), sum(x) from t"), "200|20100", "exactly the rows of the checkpoint");
    await sql(port, "insert into t values (1000)");
    assert.equal(await sql(port, "select count(*), max(x) from t"), "201|1000", "new writes after the restore");

    // and again from the restored server: checkpointed, more rows, killed, restored
    await checkpointOk(h, "pg");
    await sql(port, "insert into t select generate_series(2001, 2100)");
    await crashAndRestore(h, "pg");
    await waitFor("the server restored a second time accepts sessions", () => sql(port, "select 1").then((o) => o === "1", () => false), 180_000, 200);
    assert.equal(await sql(port, "select count(*), sum(x) from t"), "201|21100", "exactly the rows of the second checkpoint");
  });
});
