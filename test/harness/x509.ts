// In-process X.509 issuing for tests that need hundreds of certificates (test/harness/many-edges.ts): a `pki`
// process per certificate costs 0.1-1 s on a loaded 2-core machine, this costs well under a millisecond. Only what
// charon needs to authenticate a FabEdge node: an ECDSA P-256 key, a v3 certificate whose subject is the node's DN
// (every RDN a PrintableString, byte for byte what strongSwan's `pki --dn` and its identity parser produce, so a
// configured id matches without any re-encoding) with the node name as DNS SAN, signed ecdsa-with-SHA256 by the
// TestPki CA. DER rules: X.690; certificate layout: RFC 5280 §4.1.
import { createPrivateKey, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto'

/** OIDs of the RDN types a FabEdge DN uses. */
const RDN_OIDS: Record<string, string> = { C: '2.5.4.6', O: '2.5.4.10', OU: '2.5.4.11', CN: '2.5.4.3' }
const ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2'
const SUBJECT_ALT_NAME = '2.5.29.17'

function length(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  for (let v = n; v > 0; v >>= 8) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content)
  return Buffer.concat([Buffer.from([tag]), length(body.length), body])
}

const seq = (...c: Buffer[]): Buffer => tlv(0x30, ...c)
const set = (...c: Buffer[]): Buffer => tlv(0x31, ...c)

export function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map(Number)
  if (parts.length < 2 || parts.some((p) => !Number.isInteger(p) || p < 0)) throw new Error(`bad OID ${dotted}`)
  const out = [40 * parts[0]! + parts[1]!]
  for (const p of parts.slice(2)) {
    const chunk: number[] = [p & 0x7f]
    for (let v = p >>> 7; v > 0; v >>>= 7) chunk.unshift(0x80 | (v & 0x7f))
    out.push(...chunk)
  }
  return tlv(0x06, Buffer.from(out))
}

/** A non-negative INTEGER from big-endian bytes (a leading 0 keeps it positive). */
function integer(bytes: Buffer): Buffer {
  return tlv(0x02, bytes[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes)
}

function utcTime(d: Date): Buffer {
  const p = (n: number): string => String(n).padStart(2, '0')
  const s = `${p(d.getUTCFullYear() % 100)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`
  return tlv(0x17, Buffer.from(s, 'ascii'))
}

/** `C=CN, O=fabedge.io, CN=x` as an RDNSequence, each value a PrintableString (as strongSwan encodes it). */
export function dnDer(dn: string): Buffer {
  const rdns = dn.split(',').map((part) => {
    const m = /^\s*([A-Za-z]+)=(.+?)\s*$/.exec(part)
    const type = m && RDN_OIDS[m[1]!]
    if (!m || !type) throw new Error(`unsupported DN part "${part}" in ${dn}`)
    if (!/^[A-Za-z0-9 '()+,./:=?-]+$/.test(m[2]!)) throw new Error(`not a PrintableString: ${m[2]}`)
    return set(seq(oid(type), tlv(0x13, Buffer.from(m[2]!, 'ascii'))))
  })
  return seq(...rdns)
}

export interface IssuedCert {
  certPem: string
  /** PKCS#8 PEM. */
  keyPem: string
}

export interface IssueOptions {
  /** The issuing CA's subject DN, exactly as its certificate carries it. */
  issuerDn: string
  issuerKey: KeyObject | string
  subjectDn: string
  /** DNS subjectAltName (FabEdge: `<cluster>.<node>`). */
  dnsName: string
  days?: number
  now?: Date
}

/** A fresh P-256 key and a CA-signed certificate for it. */
export function issueCertificate(o: IssueOptions): IssuedCert {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const now = o.now ?? new Date()
  const notBefore = new Date(now.getTime() - 3_600_000)
  const notAfter = new Date(now.getTime() + (o.days ?? 30) * 86_400_000)
  const serial = randomBytes(8)
  serial[0] = serial[0]! & 0x7f || 1
  const sigAlg = seq(oid(ECDSA_WITH_SHA256))
  const san = seq(oid(SUBJECT_ALT_NAME), tlv(0x04, seq(tlv(0x82, Buffer.from(o.dnsName, 'ascii')))))
  const tbs = seq(
    tlv(0xa0, integer(Buffer.from([2]))),
    integer(serial),
    sigAlg,
    dnDer(o.issuerDn),
    seq(utcTime(notBefore), utcTime(notAfter)),
    dnDer(o.subjectDn),
    publicKey.export({ type: 'spki', format: 'der' }),
    tlv(0xa3, seq(san)),
  )
  const key = typeof o.issuerKey === 'string' ? createPrivateKey(o.issuerKey) : o.issuerKey
  const signature = sign('sha256', tbs, key)
  const der = seq(tbs, sigAlg, tlv(0x03, Buffer.from([0]), signature))
  return { certPem: pem('CERTIFICATE', der), keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }
}

function pem(label: string, der: Buffer): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`
}
