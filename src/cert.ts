// Reading the local certificate for `local.certs`. Only CERTIFICATE blocks ever leave this module: a PEM file that
// also holds a private key (a common operator mistake) never has the key sent to charon inline or logged.
import { readFile } from 'node:fs/promises'

export class CertError extends Error {
  override readonly name = 'CertError'
  constructor(readonly code: 'ENOENT' | 'EACCES' | 'EREAD' | 'ENOCERT', readonly file: string, message: string, options?: { cause?: unknown }) {
    super(`${file}: ${message}`, options)
  }
}

const BLOCK_RE = /-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----/g

/** The certificate blocks of a PEM text, normalized to LF line ends with a trailing newline. */
export function certificateBlocks(pem: string): string[] {
  return (pem.match(BLOCK_RE) ?? []).map((b) => `${b.replace(/\r\n/g, '\n')}\n`)
}

/** Reads a PEM file and returns its first certificate block (the leaf), as FabEdge sends it. */
export async function readCertPem(file: string): Promise<string> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new CertError(code === 'ENOENT' ? 'ENOENT' : code === 'EACCES' ? 'EACCES' : 'EREAD', file, `cannot read certificate: ${(err as Error).message}`, { cause: err })
  }
  const blocks = certificateBlocks(text)
  if (blocks.length === 0) throw new CertError('ENOCERT', file, 'no PEM CERTIFICATE block found')
  return blocks[0]!
}
