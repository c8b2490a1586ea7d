// This host's name in the mirror's lease table (docs/ha.md): TARDIGRADE_HOST_ID, or the
// hostname. Two daemons that share a hostname (containers, network namespaces) must be
// given distinct TARDIGRADE_HOST_IDs, or one could renew the other's lease.
import { hostname } from "node:os";

export function hostId(): string {
  const v = process.env.TARDIGRADE_HOST_ID?.trim();
  return v && v.length > 0 ? v.slice(0, 256) : hostname();
}
