// Issue 13, nginx: a master and two workers sharing one listening TCP socket (one open file
// description, inherited through fork), with a socketpair channel between the master and each
// worker and its accept lock in shared memory. Checkpointed while a client outside the app sends
// requests, killed -9 (the whole tree), restored: the workers answer on the same port, and the
// master still runs its workers (a worker killed after the restore is started again and the
// error log says so). As root, the workers run as nobody (nginx's default `user nobody`; the group is
// nogroup, Debian has no group nobody): the master is root, every worker switched users, and the
// workers come back as nobody (docs/engine.md, "Processes of another user"). Every wait is on a
// condition.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isAlive, waitFor } from "./helpers/home.js";
import { checkpointOk, crashAndRestore, others, setup } from "./helpers/tree.js";
import { freePort } from "./helpers/net.js";

const TIMEOUT = 1_800_000; // per describe block: generous for a busy machine; every wait inside is on a condition

function haveNginx(): boolean {
  try {
    execFileSync("nginx", ["-v"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** The Uid line of a process's status (real, effective, saved, filesystem). */
function uidLine(hostPid: number): string {
  return readFileSync(`/proc/${hostPid}/status`, "utf8").split("\n").find((l) => l.startsWith("Uid:")) ?? "";
}

/** One request on a fresh connection: the body ("worker PID"). */
function get(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/", agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve(body.trim()));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(60_000, () => req.destroy(new Error("no answer in 60 s")));
    req.end();
  });
}

/** A foreground nginx with everything in `dir`, on a private port (as root, its workers run as nobody). */
function config(dir: string, port: number): string {
  for (const d of ["logs", "tmp"]) mkdirSync(join(dir, d), { recursive: true });
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    [
      "daemon off;",
      "master_process on;",
      "worker_processes 2;",
      process.getuid?.() === 0 ? "user nobody nogroup;" : "",
      `pid ${dir}/nginx.pid;`,
      `error_log ${dir}/logs/error.log info;`,
      "events { worker_connections 64; }",
      "http {",
      `  access_log ${dir}/logs/access.log;`,
      ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((k) => `  ${k}_temp_path ${dir}/tmp/${k};`),
      `  server { listen 127.0.0.1:${port}; location / { return 200 "worker $pid\\n"; } }`,
      "}",
      "",
    ].join("\n"),
  );
  return conf;
}

describe("issue 13: nginx master + workers sharing a listening socket", { timeout: TIMEOUT }, () => {
  test("checkpointed while serving, killed -9, restored: the workers answer on the same port, the master restarts a killed worker; then checkpointed and restored again", { skip: !haveNginx() && "nginx is not installed (Debian package nginx)" }, async (t) => {
    const { h, dir } = setup(t);
    chmodSync(dir, 0o755); // the workers (nobody) reach their temp directories under it
    const port = await freePort();
    const conf = config(dir, port);
    const r = await h.cli(["run", "--name", "ngx", "--json", "--", "nginx", "-p", dir, "-c", conf]);
    assert.equal(r.code, 0, r.stderr);
    await waitFor("nginx answers", () => get(port).then((b) => b.startsWith("worker "), () => false), 120_000, 100);
    await waitFor("two workers", () => others(h, "ngx").filter((p) => p.command.includes("worker process")).length === 2);
    const workers = others(h, "ngx").filter((p) => p.command.includes("worker process")).map((p) => `worker ${p.pid}`);
    const asRoot = process.getuid?.() === 0;
    if (asRoot) for (const p of others(h, "ngx").filter((p) => p.command.includes("worker process"))) assert.match(uidLine(p.hostPid), /^Uid:\s+65534\s+65534\s+65534\s+65534$/, "a worker runs as nobody");

    // checkpoint while a client outside keeps asking: every request is answered
    let serving = true;
    let answered = 0;
    const client = (async () => {
      while (serving) {
        const b = await get(port);
        assert.ok(workers.includes(b), `answered by a worker: ${b}`);
        answered++;
      }
    })();
    await waitFor("requests flowing", () => answered >= 3);
    const id = await checkpointOk(h, "ngx");
    const after = answered;
    await waitFor("requests flowing after the checkpoint", () => answered >= after + 3);
    serving = false;
    await client;
    const ins = await h.cli(["inspect", id]);
    assert.match(ins.stdout, /process tree of 3 processes/, ins.stdout);
    assert.match(ins.stdout, new RegExp(`inet-socket .*tcp ipv4 127\\.0\\.0\\.1:${port} listening`), ins.stdout);

    await crashAndRestore(h, "ngx");
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) seen.add(await get(port));
    for (const b of seen) assert.ok(workers.includes(b), `answered by a restored worker (${workers.join(", ")}): ${b}`);
    // the restored workers are nobody again, the master root
    const restored = others(h, "ngx").filter((p) => p.command.includes("worker process"));
    assert.equal(restored.length, 2, "both workers are back");
    if (asRoot) for (const p of restored) assert.match(uidLine(p.hostPid), /^Uid:\s+65534\s+65534\s+65534\s+65534$/, `restored worker ${p.pid} runs as nobody`);
    if (asRoot) assert.match(uidLine(h.pids("ngx")!.app), /^Uid:\s+0\s+0\s+0\s+0$/, "the master is root");

    // the master after the restore: a worker killed is noticed (SIGCHLD, its channel) and started again
    const victim = others(h, "ngx").find((p) => p.command.includes("worker process"));
    assert.ok(victim, "a worker after the restore");
    process.kill(victim.hostPid, "SIGKILL");
    await waitFor("the killed worker gone", () => !isAlive(victim.hostPid));
    await waitFor("the master started a worker again", () => readFileSync(join(dir, "logs", "error.log"), "utf8").includes(`worker process ${victim.pid} exited on signal 9`) && others(h, "ngx").filter((p) => p.command.includes("worker process") && !p.zombie).length === 2);
    for (let i = 0; i < 10; i++) assert.match(await get(port), /^worker \d+$/);

    // and again from the restored tree (with the worker the master started since): checkpointed,
    // killed, restored, answering
    const now = others(h, "ngx").filter((p) => p.command.includes("worker process") && !p.zombie).map((p) => `worker ${p.pid}`);
    await checkpointOk(h, "ngx");
    await crashAndRestore(h, "ngx");
    const again = new Set<string>();
    for (let i = 0; i < 20; i++) again.add(await get(port));
    for (const b of again) assert.ok(now.includes(b), `answered by a worker restored the second time (${now.join(", ")}): ${b}`);
  });
});
