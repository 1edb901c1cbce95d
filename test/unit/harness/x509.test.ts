import t from 'tap'
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { dnDer, issueCertificate, oid } from '../../harness/x509.js'

const FIXTURES = new URL('../../fixtures/pki/', import.meta.url).pathname
const derOf = (file: string): Buffer => new X509Certificate(readFileSync(FIXTURES + file)).raw

t.test('DNs encode byte for byte as strongSwan pki writes them (fixtures made by `pki`)', async (t) => {
  t.ok(derOf('edge1.crt').includes(dnDer('C=CN, O=fabedge.io, CN=beijing.edge1')), 'subject of a pki-issued node certificate')
  t.ok(derOf('ca.crt').includes(dnDer('C=CN, O=fabedge.io, CN=fabtunnel-test-ca')), 'subject of the pki-made CA')
  t.notOk(derOf('edge1.crt').includes(dnDer('C=CN, O=fabedge.io, CN=beijing.edge2')), 'and a different DN is not found')
  t.throws(() => dnDer('C=CN, X=1'), /unsupported DN part/)
  t.throws(() => dnDer('CN=a_b'), /not a PrintableString/)
})

t.test('OIDs: first two arcs folded, large arcs in base 128', async (t) => {
  t.same(oid('1.2.840.10045.4.3.2'), Buffer.from('06082a8648ce3d040302', 'hex'), 'ecdsa-with-SHA256')
  t.same(oid('2.5.29.17'), Buffer.from('0603551d11', 'hex'), 'subjectAltName')
})

t.test('an issued certificate verifies against the CA key and carries subject, issuer, SAN and validity', async (t) => {
  const ca = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const now = new Date('2026-01-02T03:04:05Z')
  const c = issueCertificate({ issuerDn: 'C=CN, O=fabedge.io, CN=fabtunnel-test-ca', issuerKey: ca.privateKey, subjectDn: 'C=CN, O=fabedge.io, CN=beijing.edge7', dnsName: 'beijing.edge7', now, days: 30 })
  const x = new X509Certificate(c.certPem)
  t.ok(x.verify(ca.publicKey), 'signed by the CA key')
  t.notOk(x.verify(other.publicKey), 'not by another key')
  t.equal(x.subject, 'C=CN\nO=fabedge.io\nCN=beijing.edge7')
  t.equal(x.issuer, 'C=CN\nO=fabedge.io\nCN=fabtunnel-test-ca')
  t.equal(x.subjectAltName, 'DNS:beijing.edge7')
  t.equal(new Date(x.validFrom).toISOString(), '2026-01-02T02:04:05.000Z')
  t.equal(new Date(x.validTo).toISOString(), '2026-02-01T03:04:05.000Z')
  t.match(c.keyPem, /^-----BEGIN PRIVATE KEY-----\n/)
  t.ok(x.checkPrivateKey(createPrivateKey(c.keyPem)), 'the key belongs to the certificate')
})

