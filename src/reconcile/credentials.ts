// Local credentials (certificate, private key, CA) as files on disk, and whether charon holds them. FabEdge
// mounts them from a Secret at /etc/ipsec.d/; a rotated Secret changes the files and the agent reloads them over
// VICI without restarting anything. The private key is read only to be sent to charon: never logged, never
// included in an error message, never kept longer than the call.
import { createHash, createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { certificateBlocks } from '../cert.js'

export class CredentialsError extends Error {
  override readonly name = 'CredentialsError'
  constructor(readonly code: 'ENOENT' | 'EACCES' | 'EREAD' | 'EFORMAT' | 'EMISMATCH', readonly file: string, message: string, options?: { cause?: unknown }) {
    super(`${file}: ${message}`, options)
  }
}

export interface CredentialPaths {
  cert: string
  key: string
  ca: string
}

export interface Credentials {
  certPem: string
  certDer: Buffer
  caPems: string[]
  caDers: Buffer[]
  /** sha256 over cert, key and CA: changes when any file changes, without keeping the key around. */
  fingerprint: string
  /** Reads the key again for the one call that sends it. */
  readKey(): Promise<string>
}

export function pemToDer(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, ''), 'base64')
}

async function read(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new CredentialsError(code === 'ENOENT' ? 'ENOENT' : code === 'EACCES' ? 'EACCES' : 'EREAD', file, `cannot read ${what}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err })
  }
}

const KEY_RE = /-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----/

/** The key must be the certificate's: charon would accept it and fail every authentication later. */
function checkPair(paths: CredentialPaths, certPem: string, keyPem: string): void {
  let certKey: Buffer
  let ownKey: Buffer
  try {
    certKey = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })
  } catch (err) {
    throw new CredentialsError('EFORMAT', paths.cert, `not a valid X.509 certificate: ${(err as Error).message}`, { cause: err })
  }
  try {
    ownKey = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' })
  } catch (err) {
    // The message of a key parse error never contains key material, but keep it generic anyway.
    throw new CredentialsError('EFORMAT', paths.key, 'not a valid private key', { cause: err })
  }
  if (!certKey.equals(ownKey)) throw new CredentialsError('EMISMATCH', paths.key, `the private key does not belong to the certificate ${paths.cert}`)
}

export async function readCredentials(paths: CredentialPaths): Promise<Credentials> {
  const certText = await read(paths.cert, 'certificate')
  const certPem = certificateBlocks(certText)[0]
  if (!certPem) throw new CredentialsError('EFORMAT', paths.cert, 'no PEM CERTIFICATE block found')
  const keyText = await read(paths.key, 'private key')
  if (!KEY_RE.test(keyText)) throw new CredentialsError('EFORMAT', paths.key, 'no PEM PRIVATE KEY block found')
  if (/ENCRYPTED PRIVATE KEY/.test(keyText)) throw new CredentialsError('EFORMAT', paths.key, 'the private key is encrypted; charon needs it unencrypted')
  checkPair(paths, certPem, keyText)
  const caText = await read(paths.ca, 'CA certificate')
  const caPems = certificateBlocks(caText)
  if (caPems.length === 0) throw new CredentialsError('EFORMAT', paths.ca, 'no PEM CERTIFICATE block found')
  const fingerprint = createHash('sha256').update(certPem).update('\0').update(keyText).update('\0').update(caPems.join('')).digest('hex').slice(0, 16)
  return {
    certPem,
    certDer: pemToDer(certPem),
    caPems,
    caDers: caPems.map(pemToDer),
    fingerprint,
    readKey: () => read(paths.key, 'private key'),
  }
}
