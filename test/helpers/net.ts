// Network helpers of the tests: a private loopback port.
import { createServer } from "node:net";

/** A port nobody listens on right now (the kernel picks it; ports in the ephemeral range are private enough on loopback). */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((res) => s.listen(0, "127.0.0.1", res));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((res) => s.close(() => res()));
  return port;
}
