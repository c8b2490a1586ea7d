// What a test prints when a CLI command it ran did not return in time: every process under the
// test's daemon (and the CLI itself) with each thread's state, wait channel, current syscall and
// kernel stack (root only), and the ends of the daemon's log and the apps' logs. Read once, at the
// moment of the timeout, before anything is killed: the hang is seen where it is.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

function read(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (e) {
    return `(${(e as NodeJS.ErrnoException).code ?? "unreadable"})`;
  }
}

function tail(path: string, lines: number): string {
  const t = read(path).split("\n");
  return t.slice(-lines).join("\n");
}

function parents(): Map<number, number[]> {
  const kids = new Map<number, number[]>();
  for (const n of readdirSync("/proc")) {
    if (!/^\d+$/.test(n)) continue;
    const s = read(`/proc/${n}/stat`);
    const close = s.lastIndexOf(")");
    if (close < 0) continue;
    const ppid = Number(s.slice(close + 2).split(" ")[1]);
    const list = kids.get(ppid) ?? [];
    list.push(Number(n));
    kids.set(ppid, list);
  }
  return kids;
}

function describeTask(dir: string): string {
  const s = read(join(dir, "stat"));
  const close = s.lastIndexOf(")");
  const comm = s.slice(s.indexOf("(") + 1, close);
  const state = s.slice(close + 2).split(" ")[0];
  const stack = read(join(dir, "stack")).trim().split("\n").map((l) => `      ${l}`).join("\n");
  return `    ${dir.split("/").pop()} ${comm} ${state} wchan=${read(join(dir, "wchan"))} syscall=${read(join(dir, "syscall")).trim()}\n${stack}`;
}

/** A report of the processes under `roots` (and their descendants) and of the home's logs. */
export function diagnose(home: string, roots: number[]): string {
  const kids = parents();
  const seen = new Set<number>();
  const todo = [...roots];
  while (todo.length) {
    const p = todo.pop()!;
    if (seen.has(p)) continue;
    seen.add(p);
    todo.push(...(kids.get(p) ?? []));
  }
  const out: string[] = [`== processes under ${roots.join(", ")}`];
  for (const p of [...seen].sort((a, b) => a - b)) {
    const cmd = read(`/proc/${p}/cmdline`).replace(/\0/g, " ").trim();
    if (cmd.startsWith("(")) continue; // gone meanwhile
    out.push(`  pid ${p}: ${cmd.slice(0, 200)}`);
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      /* gone */
    }
    for (const t of tasks) out.push(describeTask(`/proc/${p}/task/${t}`));
  }
  out.push(`== daemon.log (end)\n${tail(join(home, "daemon.log"), 60)}`);
  let apps: string[] = [];
  try {
    apps = readdirSync(join(home, "apps"));
  } catch {
    /* none */
  }
  for (const a of apps) out.push(`== apps/${a}/log (end)\n${tail(join(home, "apps", a, "log"), 30)}`);
  return out.join("\n");
}
