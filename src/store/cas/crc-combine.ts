// CRC-32C of a concatenation from the CRCs of its parts: crc(A ‖ B) from crc(A), crc(B) and
// B's length, in O(log len) steps (multiplication by x^(8·len) modulo the polynomial, over
// GF(2), on reflected 32-bit values). Export uses it to give a PAGES record whose pages are
// one whole raw block its CRC without reading the pages again: the block's own CRC was just
// checked against the bytes read from the pack.
const POLY = 0x82f63b78; // CRC-32C, reflected

/** a(x)·b(x) modulo the polynomial. */
function multmodp(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m /= 2;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(2^k) modulo the polynomial, k = 0..31. */
const X2N: number[] = (() => {
  const t: number[] = [];
  let p = 0x40000000; // x^1
  for (let k = 0; k < 32; k++) {
    t.push(p);
    p = multmodp(p, p);
  }
  return t;
})();

/** x^(n·2^k) modulo the polynomial. */
function x2nmodp(n: number, k: number): number {
  let p = 0x80000000; // x^0
  while (n > 0) {
    if (n % 2 === 1) p = multmodp(X2N[k & 31]!, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

/** CRC-32C of A ‖ B, given crc(A), crc(B) and B's length in bytes. */
export function crc32cCombine(crcA: number, crcB: number, lenB: number): number {
  return (multmodp(x2nmodp(lenB, 3), crcA >>> 0) ^ crcB) >>> 0;
}
