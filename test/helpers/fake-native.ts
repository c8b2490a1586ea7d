// A stand-in for the C core, speaking its contracts (docs/native-interface.md), so the
// daemon's own logic can be tested without it: `fakeNativeDir()` writes executable
// wrappers named like the real binaries into a temp dir (use it as TARDIGRADE_NATIVE_DIR).
// The fake launcher is init and app at once: pidfile "<pid> <pid>", agent socket, a
// status file on exit. FAKE_AGENT (in the app's environment) picks its behaviour:
//   ok (default)   CHECKPOINT writes a valid image
//   refuse         CHECKPOINT replies {"event":"error"} (like a TCP socket refusal)
//   fail-late      "resumed", then done ok:false (the agent removes its partial file)
//   corrupt        writes an image with a flipped bit, replies done ok:true
//   exit:N         the app exits with status N at once, before its agent listens
//   exec-error     behaves like a command that cannot be executed
import { chmodSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { sampleImage } from "../../src/image/writer.js";

export function fakeNativeDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "tg-fake-"));
  const self = fileURLToPath(import.meta.url);
  for (const name of ["tardigrade-init", "tardigrade-restore"]) {
    writeFileSync(join(dir, name), `#!/bin/sh\nexec "${process.execPath}" "${self}" ${name} "$@"\n`);
    chmodSync(join(dir, name), 0o755);
  }
  writeFileSync(join(dir, "libtardigrade-agent.so"), "fake agent\n");
  return dir;
}

function arg(args: string[], name: string): string {
  const i = args.indexOf(name);
  if (i < 0 || !args[i + 1]) throw new Error(`missing ${name}`);
  return args[i + 1]!;
}

function writeAtomic(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

function main(role: string, args: string[]): void {
  // the file check before a restore (docs/native-interface.md): nothing changed
  if (role === "tardigrade-restore" && args.includes("--check-files")) process.exit(0);
  const status = arg(args, "--status");
  const sock = arg(args, "--sock");
  const pidfile = arg(args, "--pidfile");
  const mode = process.env.FAKE_AGENT ?? "ok";
  if (role === "tardigrade-init" && mode === "exec-error") {
    const cmd = args[args.indexOf("--") + 1] ?? "?";
    process.stderr.write(`tardigrade-init: cannot execute ${cmd}: No such file or directory\n`);
    writeAtomic(status, JSON.stringify({ exec_error: "No such file or directory", exit_code: 127 }) + "\n");
    process.exit(127);
  }
  // a restore streams its image on stdin: take it all, as the real restorer does
  if (role === "tardigrade-restore" && args[args.indexOf("--image") + 1] === "-") process.stdin.resume();
  writeAtomic(pidfile, `${process.pid} ${process.pid}\n`);
  if (mode.startsWith("exit:")) {
    const code = Number(mode.slice(5));
    writeAtomic(status, JSON.stringify({ exit_code: code }) + "\n");
    process.exit(code);
  }
  let seq = 0;
  const server = createServer((c) => {
    let buf = "";
    c.setEncoding("utf8");
    // the request, then (with `hold`) the daemon's words at each barrier
    const lines: string[] = [];
    let wake: (() => void) | null = null;
    const nextLine = async (): Promise<string> => {
      while (!lines.length) await new Promise<void>((r) => (wake = r));
      return lines.shift()!;
    };
    let started = false;
    c.on("data", (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        lines.push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
      const w = wake;
      wake = null;
      w?.();
      if (!started && lines.length) {
        started = true;
        void handle(lines.shift()!);
      }
    });
    const handle = async (line: string): Promise<void> => {
      const words = line.split(" ");
      const [cmd, path] = words;
      const fifo = words.includes("fifo");
      const send = (o: unknown): boolean => c.write(JSON.stringify(o) + "\n");
      if (cmd === "PING") {
        send({ ok: true, pid: 2, hostpid: process.pid, threads: 2, restored: role === "tardigrade-restore", seq });
        c.end();
      } else if (cmd === "CHECKPOINT" && path) {
        if (mode === "refuse") {
          send({ event: "error", ok: false, error: "fd 3: TCP socket 127.0.0.1:4000 (listening) is not supported" });
          c.end();
          return;
        }
        // a cut held by the daemon (its files' cut, a tree): "parked", wait for CAPTURE, "captured", wait for RESUME
        if (words.includes("hold")) {
          for (const [event, want] of [["parked", "CAPTURE"], ["captured", "RESUME"]] as const) {
            send({ event, ok: true });
            const word = await nextLine();
            if (word !== want) {
              send({ event: "error", ok: false, error: word.startsWith("ABORT") ? word.slice(6) || "the cut was called off by the daemon" : `expected ${want}, got ${word}` });
              c.end();
              return;
            }
          }
        }
        seq++;
        send({ event: "resumed", ok: true, downtime_ns: 1234, threads: 2 });
        if (mode === "fail-late") {
          send({ event: "done", ok: false, error: "write: No space left on device" });
          c.end();
          return;
        }
        const img = sampleImage({ npages: 20 });
        if (mode === "corrupt") img[img.length - 200]! ^= 1;
        // a FIFO (the daemon streams into its store) or a new file
        writeFileSync(path, img, fifo ? { flag: "w" } : { flag: "wx", mode: 0o600 });
        send({ event: "done", ok: true, bytes: img.length, pages: 20, total_ns: 5678, seq, kind: "full", parent: 0 });
        c.end();
      }
    };
  });
  rmSync(sock, { force: true });
  server.listen(sock);
  const exit = (sig: number): void => {
    writeAtomic(status, JSON.stringify({ signal: sig }) + "\n");
    process.exit(128 + sig);
  };
  process.on("SIGTERM", () => exit(15));
  process.stdout.write(`fake app ${role} running\n`);
}

const [, , role, ...rest] = process.argv;
if (role === "tardigrade-init" || role === "tardigrade-restore") main(role, rest);
