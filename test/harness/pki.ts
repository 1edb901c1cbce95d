// Throwaway PKI for tests: a CA and per-node certificate + key made with strongSwan's `pki` in a temp dir,
// identities in FabEdge's DN format (`C=CN, O=fabedge.io, CN=<cluster>.<node>`, see fabedge-compat.md).
// Keys are ECDSA P-256 by default: generated and used in milliseconds, so tests stay fast.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { exec } from './exec.js'
import { issueCertificate } from './x509.js'

export type KeyType = 'ecdsa' | 'rsa'

export interface NodeCert {
  /** IKE identity, e.g. `C=CN, O=fabedge.io, CN=beijing.edge1`. */
  id: string
  certPem: string
  keyPem: string
  certPath: string
  keyPath: string
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/

/** FabEdge's certificate subject / IKE id for a node of a cluster. */
export function fabedgeId(cluster: string, node: string): string {
  for (const n of [cluster, node]) if (!NAME.test(n)) throw new Error(`bad cluster/node name for a DN: ${n}`)
  return `C=CN, O=fabedge.io, CN=${cluster}.${node}`
}

async function pki(args: string[], keyType: KeyType): Promise<string> {
  const sizeArgs = keyType === 'ecdsa' ? ['--size', '256'] : ['--size', '2048']
  const argv = ['pki', ...args.flatMap((a) => (a === '@size' ? sizeArgs : [a]))]
  return exec(argv, { timeoutMs: 20_000 }).catch((e: unknown) => {
    throw new Error(`pki ${args[0]} failed (keyType ${keyType})`, { cause: e })
  })
}

const CA_DN = 'C=CN, O=fabedge.io, CN=fabtunnel-test-ca'

export class TestPki {
  private caKeyPem: string | undefined

  private constructor(
    readonly dir: string,
    readonly keyType: KeyType,
    readonly caCertPem: string,
    readonly caCertPath: string,
    private readonly caKeyPath: string,
  ) {}

  /** Makes a CA (`C=CN, O=fabedge.io, CN=fabtunnel-test-ca`) in a fresh temp dir. */
  static async create(opts: { keyType?: KeyType } = {}): Promise<TestPki> {
    const keyType = opts.keyType ?? 'ecdsa'
    const dir = await mkdtemp(join(tmpdir(), 'ft-pki-'))
    try {
      const caKeyPath = join(dir, 'ca.key')
      const caCertPath = join(dir, 'ca.crt')
      await writeFile(caKeyPath, await pki(['--gen', '--type', keyType, '@size', '--outform', 'pem'], keyType), { mode: 0o600 })
      const caCert = await pki(
        ['--self', '--ca', '--lifetime', '30', '--in', caKeyPath, '--type', keyType,
          '--dn', CA_DN, '--outform', 'pem'],
        keyType,
      )
      await writeFile(caCertPath, caCert)
      return new TestPki(dir, keyType, caCert, caCertPath, caKeyPath)
    } catch (e) {
      await rm(dir, { recursive: true, force: true })
      throw e
    }
  }

  /** Issues a key and a CA-signed certificate whose subject (and SAN) is fabedgeId(cluster, node). */
  async issue(cluster: string, node: string): Promise<NodeCert> {
    const id = fabedgeId(cluster, node)
    const base = join(this.dir, `${cluster}.${node}`)
    const keyPath = `${base}.key`
    const certPath = `${base}.crt`
    const kt = this.keyType
    await writeFile(keyPath, await pki(['--gen', '--type', kt, '@size', '--outform', 'pem'], kt), { mode: 0o600 })
    const cert = await pki(
      ['--issue', '--lifetime', '30', '--cacert', this.caCertPath, '--cakey', this.caKeyPath,
        '--type', 'priv', '--in', keyPath, '--dn', id, '--san', `${cluster}.${node}`, '--outform', 'pem'],
      kt,
    )
    await writeFile(certPath, cert)
    return { id, certPem: cert, keyPem: await readFile(keyPath, 'utf8'), certPath, keyPath }
  }

  /**
   * Like issue(), without a `pki` process: key and certificate made in process (x509.ts), ECDSA P-256 whatever the
   * CA's key type. For tests that need hundreds of node certificates (many-edges.ts).
   */
  async issueInProcess(cluster: string, node: string): Promise<NodeCert> {
    const id = fabedgeId(cluster, node)
    this.caKeyPem ??= await readFile(this.caKeyPath, 'utf8')
    const { certPem, keyPem } = issueCertificate({ issuerDn: CA_DN, issuerKey: this.caKeyPem, subjectDn: id, dnsName: `${cluster}.${node}` })
    const base = join(this.dir, `${cluster}.${node}`)
    await writeFile(`${base}.key`, keyPem, { mode: 0o600 })
    await writeFile(`${base}.crt`, certPem)
    return { id, certPem, keyPem, certPath: `${base}.crt`, keyPath: `${base}.key` }
  }

  async destroy(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true })
  }
}
