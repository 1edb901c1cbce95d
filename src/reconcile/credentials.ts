// Local credentials (certificate, private key, CA) as files on disk, and which credentials in charon are ours.
// FabEdge mounts them from a Secret at /etc/ipsec.d/; a rotated Secret changes the files and the agent reloads them
// over VICI without restarting anything. The private key is read only to be sent to charon: never logged, never
// included in an error message, never kept longer than the call.
//
// Only our own credentials are ever touched (a bare-metal edge's charon often serves other VPNs too, whose
// credentials `clear-creds` would wipe). strongSwan 5.9.8's VICI (vici_cred.c, vici_authority.c) offers:
// `load-key` answering the key id (hex SHA-1 of the public key) and `unload-key` by that id; `load-authority` /
// `unload-authority` by name (re-loading a name replaces it); `load-cert` without any way back but `clear-creds`.
// So: our CA certificates are authorities named `fabtunnel-ca[-N]`; our key is known by its id, computed from
// our certificate; our certificate itself is loaded with `load-cert` and inline in every connection
// (`local.certs`), which makes charon sign with exactly that certificate's key. A certificate cannot be unloaded
// alone: without its key it is inert, and it also marks the keys we loaded in earlier agent runs (a key whose
// certificate has our subject is ours).
import { createHash, createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { certificateBlocks } from '../cert.js'
import type { TunnelsPort } from './tunnels-port.js'

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
  /** charon's id of our private key (see keyIdOf). */
  keyId: string
  /** The certificate's subject, in one spelling (see certSubject). */
  subject: string
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
  const certDer = pemToDer(certPem)
  return {
    certPem,
    certDer,
    keyId: keyIdOf(certDer),
    subject: certSubject(certDer),
    caPems,
    caDers: caPems.map(pemToDer),
    fingerprint,
    readKey: () => read(paths.key, 'private key'),
  }
}

/** Name of the VICI authority holding our `i`-th CA certificate. */
export function authorityName(i: number): string {
  return i === 0 ? 'fabtunnel-ca' : `fabtunnel-ca-${i + 1}`
}

export function isOwnAuthority(name: string): boolean {
  return /^fabtunnel-ca(-\d+)?$/.test(name)
}

/** One DER element at `off`: tag, and where its content starts and ends. */
function derElement(buf: Buffer, off: number): { tag: number; start: number; end: number } {
  const tag = buf[off]!
  let len = buf[off + 1]!
  let start = off + 2
  if (len & 0x80) {
    const n = len & 0x7f
    len = 0
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i]!
    start += n
  }
  if (start + len > buf.length) throw new Error('truncated DER')
  return { tag, start, end: start + len }
}

/**
 * charon's id of the private key belonging to a certificate (KEYID_PUBKEY_SHA1, what `load-key` answers and
 * `unload-key` takes): SHA-1 over the content of the SubjectPublicKeyInfo's BIT STRING (the PKCS#1 key for RSA,
 * the EC point for ECDSA), as lower-case hex.
 */
export function keyIdOf(certDer: Buffer): string {
  const spki = new X509Certificate(certDer).publicKey.export({ type: 'spki', format: 'der' })
  const outer = derElement(spki, 0)
  const algorithm = derElement(spki, outer.start)
  const bits = derElement(spki, algorithm.end)
  if (outer.tag !== 0x30 || algorithm.tag !== 0x30 || bits.tag !== 0x03) throw new Error('unexpected SubjectPublicKeyInfo')
  // The first content byte of a BIT STRING counts unused bits (0 for keys).
  return createHash('sha1').update(spki.subarray(bits.start + 1, bits.end)).digest('hex')
}

/** A certificate's subject, one RDN per line as node:crypto prints it; '' for data that is not a certificate. */
export function certSubject(der: Buffer): string {
  try {
    return new X509Certificate(der).subject
  } catch {
    return ''
  }
}

/**
 * Our keys among those loaded over VICI (`get-keys`): those whose certificate in charon carries our subject (also
 * keys of certificates we rotated away from in earlier agent runs), plus any we loaded ourselves.
 *
 * Limitation: charon keeps one copy of a key per key id and records no owner, so a key that another VPN on the same
 * charon loaded with a certificate of our subject (e.g. a bare-metal edge's own VPN using the node certificate) is
 * indistinguishable from ours: a rotation away from it, or `fabtunnel cleanup`, unloads it for that VPN too. VICI
 * offers nothing to tell them apart (that VPN's operator reloads its key, e.g. `swanctl --load-creds`, afterwards).
 */
export function ownKeyIds(subject: string, certs: ReadonlyArray<{ flag: string; data: Buffer }>, keys: readonly string[], loadedByUs: ReadonlySet<string> = new Set()): string[] {
  const ours = new Set(loadedByUs)
  for (const c of certs) if (c.flag !== 'CA' && subject !== '' && certSubject(c.data) === subject) ours.add(keyIdOf(c.data))
  return keys.filter((k) => ours.has(k.toLowerCase()))
}

/** What must change in charon for our credentials. */
export interface CredentialsChange {
  /** Load these (authorities, certificate, key): charon does not hold them yet. */
  load: Credentials | null
  /** Our keys that are not the current one (rotated away from), unloaded once no connection needs them. */
  unloadKeys: string[]
  /** Our authorities for CA certificates no longer in the CA file. */
  unloadAuthorities: string[]
}

export const NO_CREDENTIALS_CHANGE: CredentialsChange = { load: null, unloadKeys: [], unloadAuthorities: [] }

/**
 * Our credentials: the last good files in force, and what charon holds of them. Reading the files is an explicit
 * step (`refresh`); `observe` only reads charon; `load` / `unloadKey` / `unloadAuthority` are the writes.
 */
export class OwnCredentials {
  private inForce: Credentials | null = null
  /** Fingerprint of the credentials charon was last seen or made to hold (an observation cache). */
  private held: string | null = null
  /** Key ids we loaded into this charon instance. */
  private readonly loadedKeys = new Set<string>()

  constructor(
    private readonly port: Pick<TunnelsPort, 'listCerts' | 'getKeys' | 'getAuthorities' | 'loadAuthority' | 'unloadAuthority' | 'loadCert' | 'loadKey' | 'unloadKey'>,
    readonly paths: CredentialPaths | null,
  ) {}

  /** The last good credentials read from the files, or null. */
  get current(): Credentials | null {
    return this.inForce
  }

  /** Whether charon is known to hold the credentials in force. */
  get loaded(): boolean {
    return this.inForce !== null && this.held === this.inForce.fingerprint
  }

  /**
   * Reads the files again. A broken file (unreadable, not PEM, key not matching the certificate) is returned as
   * the error to report, and the last good credentials stay in force, like the last good config.
   */
  async refresh(): Promise<CredentialsError | null> {
    if (!this.paths) return null
    try {
      this.inForce = await readCredentials(this.paths)
      return null
    } catch (err) {
      if (!(err instanceof CredentialsError)) throw err
      return err
    }
  }

  /** What must change in charon. Cheap when charon is known to hold the credentials in force (unless `deep`). */
  async observe(deep: boolean): Promise<CredentialsChange> {
    const c = this.inForce
    if (!c || (!deep && this.held === c.fingerprint)) return NO_CREDENTIALS_CHANGE
    const [certs, keys, authorities] = await Promise.all([this.port.listCerts(), this.port.getKeys(), this.port.getAuthorities()])
    const wanted = new Set(c.caPems.map((_, i) => authorityName(i)))
    const present =
      certs.some((x) => x.flag !== 'CA' && x.hasPrivkey && x.data.equals(c.certDer)) &&
      c.caDers.every((der) => certs.some((x) => x.data.equals(der))) &&
      [...wanted].every((n) => authorities.includes(n))
    this.held = present ? c.fingerprint : null
    return {
      load: present ? null : c,
      unloadKeys: ownKeyIds(c.subject, certs, keys, this.loadedKeys).filter((k) => k !== c.keyId),
      unloadAuthorities: authorities.filter((n) => isOwnAuthority(n) && !wanted.has(n)),
    }
  }

  /**
   * Loads the credentials, each step additive (authorities replaced by name, certificate, key): interrupted at
   * any call, charon still holds a usable set (the old key stays until unloadKey, after the connections moved to
   * the new certificate).
   */
  async load(c: Credentials): Promise<void> {
    for (const [i, pem] of c.caPems.entries()) await this.port.loadAuthority(authorityName(i), pem)
    await this.port.loadCert(c.certPem)
    const id = (await this.port.loadKey(await c.readKey())).toLowerCase()
    this.loadedKeys.add(id)
    // readCredentials checked the pair; the key file may have changed since. charon would accept any key and fail
    // every authentication later, so say it now, and take back the key that fits nothing of ours.
    if (id !== c.keyId) {
      await this.port.unloadKey(id).catch(() => undefined)
      this.loadedKeys.delete(id)
      throw new CredentialsError('EMISMATCH', this.paths?.key ?? 'private key', 'the private key does not belong to the certificate (charon holds the certificate without its key)')
    }
    this.held = c.fingerprint
  }

  async unloadKey(id: string): Promise<void> {
    await this.port.unloadKey(id)
    this.loadedKeys.delete(id)
  }

  unloadAuthority(name: string): Promise<void> {
    return this.port.unloadAuthority(name)
  }

  /** charon restarted: it holds nothing of ours any more. */
  forget(): void {
    this.held = null
    this.loadedKeys.clear()
  }
}
