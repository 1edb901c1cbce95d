// The Kubernetes shape: every manifest under deploy/kubernetes parses as YAML, the kustomizations render (a
// subset of kustomize: resources, namespace, nameSuffix, labels, images and JSON6902 patches with test ops, which
// is all these use; anything else fails here first), and every rendered object validates against the Kubernetes
// OpenAPI schemas offline. Validator: the `kubernetes-models` package (devDependency, pinned), twice over: its
// ajv validators compiled from the OpenAPI spec (types, required fields, formats such as quantities), and its
// TypeScript interfaces, through which the TypeScript compiler rejects unknown or misspelled fields (the OpenAPI
// schemas allow extra properties, like `kubectl apply` without --validate=strict). Then the properties the
// deployment relies on: FabEdge names, host networking, capabilities, probes, shared /run, the iptables lock.
import t from 'tap'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import ts from 'typescript'
import { parseAllDocuments } from 'yaml'
import { DEFAULTS } from '../../src/fabedge.js'
import { execCapture } from '../harness/exec.js'

const ROOT = new URL('../../', import.meta.url).pathname
const K8S = join(ROOT, 'deploy', 'kubernetes')
const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }

type Obj = Record<string, any>

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e)
    if (statSync(p).isDirectory()) return yamlFiles(p)
    return /\.ya?ml$/.test(e) ? [p] : []
  })
}

function parseFile(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'), { prettyErrors: true })
  if (!Array.isArray(docs)) throw new Error(`${file}: not a YAML stream`)
  for (const d of docs) {
    const problems = [...d.errors, ...d.warnings]
    if (problems.length) throw new Error(`${relative(ROOT, file)}: ${problems.map((e) => e.message).join('; ')}`)
  }
  return docs.map((d) => d.toJS() as Obj).filter((o) => o !== null)
}

// --- the kustomize subset -------------------------------------------------------------------------------------

const KUSTOMIZATION_KEYS = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'nameSuffix', 'labels', 'patches', 'images'])

function pointer(obj: Obj, path: string): { parent: Obj; key: string } {
  const parts = path.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
  let cur: any = obj
  for (const p of parts.slice(0, -1)) {
    if (cur === undefined || cur === null || !(p in cur)) throw new Error(`patch path ${path}: no ${p}`)
    cur = cur[p]
  }
  const key = parts.at(-1)!
  if (!(key in cur)) throw new Error(`patch path ${path}: no ${key}`)
  return { parent: cur, key }
}

function applyJsonPatch(obj: Obj, ops: Obj[]): void {
  for (const op of ops) {
    const { parent, key } = pointer(obj, op.path)
    if (op.op === 'test') {
      if (!isDeepStrictEqual(parent[key], op.value)) throw new Error(`test op failed at ${op.path}: ${JSON.stringify(parent[key])}`)
    } else if (op.op === 'replace') {
      parent[key] = op.value
    } else {
      throw new Error(`patch op ${op.op} not supported by this renderer`)
    }
  }
}

function render(dir: string): Obj[] {
  const [k] = parseFile(join(dir, 'kustomization.yaml'))
  if (!k) throw new Error(`${dir}: empty kustomization`)
  for (const key of Object.keys(k)) if (!KUSTOMIZATION_KEYS.has(key)) throw new Error(`${dir}: kustomization key ${key} not supported`)
  if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || k.kind !== 'Kustomization') throw new Error(`${dir}: not a Kustomization`)
  const objs: Obj[] = []
  for (const r of k.resources ?? []) {
    const p = join(dir, r)
    if (!existsSync(p)) throw new Error(`${dir}: resource ${r} does not exist`)
    objs.push(...(statSync(p).isDirectory() ? render(p) : parseFile(p)))
  }
  for (const patch of k.patches ?? []) {
    const targets = objs.filter((o) => o.kind === patch.target?.kind && o.metadata?.name === patch.target?.name)
    if (targets.length !== 1) throw new Error(`${dir}: patch target ${JSON.stringify(patch.target)} matches ${targets.length} objects`)
    const ops = parseInlinePatch(patch.patch)
    applyJsonPatch(targets[0]!, ops)
  }
  for (const o of objs) {
    if (k.nameSuffix) o.metadata.name += k.nameSuffix
    for (const l of k.labels ?? []) {
      Object.assign((o.metadata.labels ??= {}), l.pairs)
      if (l.includeSelectors && o.spec?.selector?.matchLabels) {
        Object.assign(o.spec.selector.matchLabels, l.pairs)
        Object.assign((o.spec.template.metadata.labels ??= {}), l.pairs)
      }
    }
    if (k.namespace) o.metadata.namespace = k.namespace
    for (const img of k.images ?? []) {
      for (const c of [...(o.spec?.template?.spec?.containers ?? []), ...(o.spec?.template?.spec?.initContainers ?? [])]) {
        const [name] = String(c.image).split(':')
        if (name === img.name) c.image = `${img.newName ?? name}:${img.newTag}`
      }
    }
  }
  return objs
}

function parseInlinePatch(text: string): Obj[] {
  const docs = parseAllDocuments(text)
  if (!Array.isArray(docs) || docs.length !== 1 || docs[0]!.errors.length) throw new Error('inline patch is not one YAML document')
  return docs[0]!.toJS() as Obj[]
}

// --- the validators -------------------------------------------------------------------------------------------

function modelPath(o: Obj): string {
  if (typeof o.apiVersion !== 'string' || typeof o.kind !== 'string') throw new Error('object without apiVersion/kind')
  return `kubernetes-models/${o.apiVersion}/${o.kind}`
}

/** Runtime validation with the ajv validators compiled from the OpenAPI spec; returns the error text or null. */
async function schemaErrors(o: Obj): Promise<string | null> {
  const mod = (await import(modelPath(o))) as Record<string, new (data: Obj) => { validate(): void }>
  const Model = mod[o.kind]
  if (!Model) return `no model for ${o.apiVersion} ${o.kind}`
  try {
    new Model(structuredClone(o)).validate()
    return null
  } catch (err) {
    return (err as Error).message
  }
}

/** Type-checks each object as an object literal of its kubernetes-models interface; returns the diagnostics. */
function unknownFieldErrors(objs: Obj[]): string[] {
  const file = join(ROOT, 'test', 'deploy', '__manifests__.ts')
  const lines: string[] = []
  objs.forEach((o, i) => {
    lines.push(`import type { I${o.kind} as T${i} } from '${modelPath(o)}'`)
    lines.push(`export const m${i}: T${i} = ${JSON.stringify(o, null, 2)}`)
  })
  const source = lines.join('\n') + '\n'
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2022.d.ts'],
    types: [],
    skipLibCheck: true,
  }
  const host = ts.createCompilerHost(options)
  const readFile = host.readFile.bind(host)
  const fileExists = host.fileExists.bind(host)
  host.readFile = (f) => (f === file ? source : readFile(f))
  host.fileExists = (f) => f === file || fileExists(f)
  const program = ts.createProgram([file], options, host)
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file && d.start !== undefined ? `line ${d.file.getLineAndCharacterOfPosition(d.start).line + 1}: ` : ''
    return where + ts.flattenDiagnosticMessageText(d.messageText, '\n')
  })
}

// --- the tests ------------------------------------------------------------------------------------------------

const files = yamlFiles(K8S)
const rendered = {
  top: render(K8S),
  edge: render(join(K8S, 'edge')),
}
const connector = rendered.top.find((o) => o.kind === 'DaemonSet' && o.metadata.name === 'fabtunnel-connector')!
const edge = rendered.edge.find((o) => o.kind === 'DaemonSet')!

t.test('every manifest parses and every kustomization renders', async (t) => {
  t.ok(files.length >= 5, `${files.length} YAML files`)
  for (const f of files) t.doesNotThrow(() => parseFile(f), relative(ROOT, f))
  for (const f of files.filter((f) => f.endsWith('kustomization.yaml'))) {
    t.doesNotThrow(() => render(dirname(f)), `renders ${relative(ROOT, f)}`)
  }
  t.same(rendered.top.map((o) => `${o.kind}/${o.metadata.namespace}/${o.metadata.name}`), ['DaemonSet/fabedge/fabtunnel-connector'])
  t.same(rendered.edge.map((o) => `${o.kind}/${o.metadata.namespace}/${o.metadata.name}`), ['DaemonSet/fabedge/fabtunnel-edge'])
})

t.test('rendered objects and plain resource files validate against the Kubernetes schemas', async (t) => {
  const plain = files.filter((f) => !f.endsWith('kustomization.yaml')).flatMap(parseFile)
  const all = [...rendered.top, ...rendered.edge, ...plain]
  for (const o of all) t.equal(await schemaErrors(o), null, `${o.kind} ${o.metadata?.name}: OpenAPI schema`)
  t.same(unknownFieldErrors(all), [], 'no unknown fields')
})

t.test('the validators reject what they should (the checks can fail)', async (t) => {
  const wrongType = structuredClone(connector)
  wrongType.spec.template.spec.hostNetwork = 'yes'
  t.match(await schemaErrors(wrongType), /hostNetwork must be boolean/)
  const badQuantity = structuredClone(connector)
  badQuantity.spec.template.spec.containers[0].resources.limits.memory = 'lots'
  t.match(await schemaErrors(badQuantity), /quantity/)
  const typo = structuredClone(connector)
  typo.spec.template.spec.containers[0].securityContext.capabilitys = typo.spec.template.spec.containers[0].securityContext.capabilities
  const errs = unknownFieldErrors([typo])
  t.equal(errs.length, 1)
  t.match(errs[0], /'"?capabilitys"?' does not exist/)
  const patched = structuredClone(connector)
  t.throws(() => applyJsonPatch(patched, [{ op: 'test', path: '/spec/template/spec/volumes/0/name', value: 'not-the-name' }]))
})

t.test('FabEdge names: ConfigMap at /etc/fabedge, TLS Secret at /etc/ipsec.d, node placement', async (t) => {
  const cases = [
    { ds: connector, role: 'node-role.kubernetes.io/connector' },
    { ds: edge, role: 'node-role.kubernetes.io/edge' },
  ]
  for (const { ds, role } of cases) {
    const spec = ds.spec.template.spec
    const agent = spec.containers.find((c: Obj) => c.name === 'fabtunnel')
    const mount = (name: string) => agent.volumeMounts.find((m: Obj) => m.name === name)
    t.equal(mount('fabedge-config').mountPath, dirname(DEFAULTS.config))
    t.equal(mount('ipsec-d').mountPath, '/etc/ipsec.d')
    const term = spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms
    t.equal(term.length, 1)
    t.same(term[0].matchExpressions, [{ key: role, operator: 'Exists' }])
    t.notOk(term[0].matchFields, 'no per-node pinning: one DaemonSet for every node of the role')
    t.ok(spec.tolerations.some((x: Obj) => x.key === role && x.effect === 'NoSchedule'), 'tolerates its role taint')
  }
  // The connector reads FabEdge's connector ConfigMap and Secret; the Secret's keys land where fabtunnel's
  // --ca/--cert/--key defaults look.
  const cvol = (name: string) => connector.spec.template.spec.volumes.find((v: Obj) => v.name === name)
  t.equal(cvol('fabedge-config').configMap.name, 'connector-config')
  t.equal(cvol('ipsec-d').secret.secretName, 'connector-tls')
  const items = Object.fromEntries(cvol('ipsec-d').secret.items.map((i: Obj) => [i.key, `/etc/ipsec.d/${i.path}`]))
  t.same(items, { 'ca.crt': DEFAULTS.ca, 'tls.crt': DEFAULTS.cert, 'tls.key': DEFAULTS.key })
  // The plain edge DaemonSet (clusters without FabEdge's operator) reads each node's own files: the same paths on
  // the host, which must exist (type Directory), so a node without them gets no half-configured agent.
  const evol = (name: string) => edge.spec.template.spec.volumes.find((v: Obj) => v.name === name)
  t.same(evol('fabedge-config').hostPath, { path: dirname(DEFAULTS.config), type: 'Directory' })
  t.same(evol('ipsec-d').hostPath, { path: '/etc/ipsec.d', type: 'Directory' })
  t.notOk(evol('fabedge-config').configMap, 'no ConfigMap shared by every edge node')
  t.notOk(evol('ipsec-d').secret, 'no Secret shared by every edge node: no node gets another node\'s key')
})

t.test('pod shape: host network, no API access, shared /run, the host iptables lock, shutdown budget', async (t) => {
  for (const ds of [connector, edge]) {
    const spec = ds.spec.template.spec
    t.equal(spec.hostNetwork, true)
    t.equal(spec.automountServiceAccountToken, false, 'no token: the agent never calls the API')
    t.notOk(spec.serviceAccountName, 'no ServiceAccount, so no RBAC')
    t.ok(spec.terminationGracePeriodSeconds >= 5 && spec.terminationGracePeriodSeconds <= 30, 'fits a < 5 s shutdown')
    t.same(spec.containers.map((c: Obj) => c.name), ['fabtunnel', 'strongswan'])
    const run = spec.volumes.find((v: Obj) => v.name === 'run')
    t.ok(run.emptyDir, '/run is a pod-local emptyDir')
    for (const c of spec.containers) {
      const m = c.volumeMounts.find((m: Obj) => m.name === 'run')
      // Debian images link /var/run to /run, so the VICI socket /var/run/charon.vici is in this volume.
      t.equal(m.mountPath, '/run', `${c.name}: /run shared`)
    }
    const lock = spec.volumes.find((v: Obj) => v.name === 'xtables-lock')
    t.same(lock.hostPath, { path: '/run/xtables.lock', type: 'FileOrCreate' })
    const agentMounts = spec.containers[0].volumeMounts.map((m: Obj) => m.mountPath)
    // Runtimes order mounts by depth: the lock must be deeper than /run or the emptyDir would hide it.
    t.ok(agentMounts.indexOf('/run') < agentMounts.indexOf('/run/xtables.lock'), 'lock mounted inside /run, after it')
  }
  const kinds = [...rendered.top, ...rendered.edge].map((o) => o.kind)
  for (const k of ['ServiceAccount', 'Role', 'ClusterRole', 'RoleBinding', 'ClusterRoleBinding', 'Namespace']) {
    t.notOk(kinds.includes(k), `no ${k}`)
  }
})

t.test('capabilities, not privilege', async (t) => {
  for (const ds of [connector, edge]) {
    const [agent, charon] = ds.spec.template.spec.containers
    for (const c of [agent, charon]) {
      const sc = c.securityContext
      t.notOk(sc.privileged, `${c.name}: not privileged`)
      t.equal(sc.allowPrivilegeEscalation, false)
      t.equal(sc.readOnlyRootFilesystem, true)
      t.same(sc.capabilities.drop, ['ALL'])
      t.equal(sc.seccompProfile.type, 'RuntimeDefault')
    }
    t.same(agent.securityContext.capabilities.add, ['NET_ADMIN', 'NET_RAW'])
    t.same(charon.securityContext.capabilities.add, ['NET_ADMIN', 'NET_BIND_SERVICE'])
  }
})

t.test('probes, environment, resources, images', async (t) => {
  const runFlags = new Set(['config', 'vici', 'cert', 'key', 'ca', 'listen', 'datapath', 'resync-interval', 'log-level'])
  for (const ds of [connector, edge]) {
    const [agent, charon] = ds.spec.template.spec.containers
    const env = Object.fromEntries(agent.env.map((e: Obj) => [e.name, e.value]))
    for (const name of Object.keys(env).filter((n) => n.startsWith('FABTUNNEL_'))) {
      t.ok(runFlags.has(name.slice('FABTUNNEL_'.length).toLowerCase().replace(/_/g, '-')), `${name} is a run flag twin`)
    }
    t.equal(env.FABTUNNEL_VICI, DEFAULTS.vici)
    t.equal(env.FABTUNNEL_LISTEN, DEFAULTS.listen)
    const [host, port] = DEFAULTS.listen.split(':')
    for (const [probe, path] of [
      ['startupProbe', '/healthz'],
      ['livenessProbe', '/healthz'],
      ['readinessProbe', '/readyz'],
    ] as const) {
      t.same(agent[probe].httpGet, { host, path, port: Number(port) }, `${probe} on the agent's loopback listener`)
    }
    t.same(agent.args, ['run'])
    for (const c of [agent, charon]) {
      t.ok(c.resources.requests.memory && c.resources.requests.cpu, `${c.name}: requests`)
      t.ok(c.resources.limits.memory, `${c.name}: memory limit`)
      t.ok(c.livenessProbe && c.readinessProbe, `${c.name}: liveness and readiness probes`)
    }
    const heap = Number(/--max-old-space-size=(\d+)/.exec(env.NODE_OPTIONS)?.[1])
    const limitMi = Number(/^(\d+)Mi$/.exec(agent.resources.limits.memory)?.[1])
    t.ok(heap > 0 && heap < limitMi, `V8 heap cap ${heap} MiB below the ${limitMi} MiB limit`)
    t.equal(agent.image, `fabtunnel:${PKG.version}`, 'agent image tag is the package version')
  }
  // The sidecar image installs Debian 12's strongSwan, the one scripts/setup installs and tests run against here.
  const deb = await execCapture(['dpkg-query', '-W', '-f', '${Version}', 'strongswan-charon'])
  const upstream = /^(?:\d+:)?([\d.]+)/.exec(deb.stdout)?.[1]
  for (const ds of [connector, edge]) t.equal(ds.spec.template.spec.containers[1].image, `fabtunnel-strongswan:${upstream}`)
})
