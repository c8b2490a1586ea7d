// tmux under tardigrade (Debian's tmux; .ci/run installs it): a server on a private socket (-L,
// -f /dev/null) with a window whose program counts into a file and reads lines from its terminal.
// Keys sent from outside (tmux send-keys) reach it; checkpoint, kill -9 of the whole tree, restore:
// tmux answers from outside on the same socket (capture-pane shows the screen as it was, send-keys
// reaches the program again), the window's terminal is the same /dev/pts/N, and the counter goes on
// from the checkpoint (its file rolled back with it: 1, 2, 3... without a gap); it checkpoints again. Every process
// started is killed by PID (helpers/tree.ts, helpers/home.ts); the tmux clients the test runs end
// by themselves (each under a time limit).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { waitFor } from "./helpers/home.js";
import { fixtureScript } from "./helpers/native.js";
import { runApp, status } from "./helpers/scenario.js";
import { checkpointOk, crashAndRestore, setup } from "./helpers/tree.js";

function fileLines(path: string): string[] {
  try {
    return readFileSync(path, "utf8").split("\n").filter((l) => l.length > 0);
  } catch {
    return [];
  }
}

describe("tmux", { timeout: 600_000 }, () => {
  test("a tmux server with a window: send-keys, checkpoint, kill -9, restore; capture-pane and send-keys from outside work, the counter goes on", async (t) => {
    assert.ok(existsSync("/usr/bin/tmux"), "tmux is not installed (Debian package tmux; .ci/run installs it)");
    const { h, dir } = setup(t);
    const sock = `tg-pty-${process.pid}`;
    const uid = process.getuid?.() ?? 0;
    t.after(() => rmSync(join(process.env["TMUX_TMPDIR"] ?? "/tmp", `tmux-${uid}`, sock), { force: true }));
    const tmux = (...args: string[]): string => execFileSync("tmux", ["-L", sock, ...args], { encoding: "utf8", timeout: 30_000, stdio: ["ignore", "pipe", "pipe"] });
    const count = join(dir, "count");
    const typed = join(dir, "typed");
    await runApp(h, "tmx", ["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "100", "-y", "30", `sh ${fixtureScript("ptycounter.sh")} ${count} ${typed}`]);
    await waitFor("the counter counts", () => fileLines(count).length >= 3, 120_000);
    const paneTty = tmux("display-message", "-p", "-t", "main", "#{pane_tty}").trim();
    assert.equal(paneTty, "/dev/pts/0", "the app's own devpts numbers its first pty 0");
    tmux("send-keys", "-t", "main", "hello-before", "Enter");
    await waitFor("the window's program read the line", () => fileLines(typed).includes("got hello-before"), 60_000);
    await checkpointOk(h, "tmx");
    await crashAndRestore(h, "tmx");
    const atRestore = fileLines(count);
    assert.ok(atRestore.length >= 3, `the counter's file as at the checkpoint (${atRestore.length} lines)`);
    assert.deepEqual(fileLines(typed), ["got hello-before"], "the typed file as at the checkpoint");
    // tmux answers on its socket, with the screen it had
    assert.match(tmux("capture-pane", "-p", "-t", "main"), /hello-before/);
    assert.equal(tmux("display-message", "-p", "-t", "main", "#{pane_tty}").trim(), paneTty, "the same terminal");
    assert.equal(tmux("display-message", "-p", "-t", "main", "#{window_width}x#{window_height}").trim(), "100x30");
    tmux("send-keys", "-t", "main", "hello-after", "Enter");
    await waitFor("the restored program reads from its restored terminal", () => fileLines(typed).includes("got hello-after"), 60_000);
    assert.deepEqual(fileLines(typed), ["got hello-before", "got hello-after"]);
    await waitFor("the counter goes on", () => fileLines(count).length >= atRestore.length + 5, 120_000);
    const all = fileLines(count);
    assert.deepEqual(all, all.map((_, i) => String(i + 1)), "1, 2, 3... from the checkpoint on, no gap, nothing twice");
    assert.match(tmux("capture-pane", "-p", "-t", "main"), /hello-after/);
    // and it checkpoints again (the window's shell forks `sleep` all the time: the first fork after
    // the restore took pid 2, whose agent took the main agent's socket, before ns_last_pid was set)
    await checkpointOk(h, "tmx");
    assert.equal((await status(h, "tmx")).state, "running");
  });
});
