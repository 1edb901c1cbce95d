import t from 'tap'
import { parseStrongswanConf, renderCharonSettings, SCALE_KEYS, StrongswanConfError } from '../../harness/strongswan-conf.js'

const TEXT = `# comment
charon {
    load = random nonce vici   # trailing comment
    threads = 32
    processor {
        priority_threads {
            high = 2
        }
    }
    plugins {
        vici {
            socket = unix:///var/run/charon.vici
        }
    }
}
include /etc/strongswan.d/*.conf
charon {
    threads = 48
}
`

t.test('settings become dotted keys; comments and includes are skipped; the last value wins', async (t) => {
  const s = parseStrongswanConf(TEXT)
  t.same(Object.fromEntries(s), {
    'charon.load': 'random nonce vici',
    'charon.threads': '48',
    'charon.processor.priority_threads.high': '2',
    'charon.plugins.vici.socket': 'unix:///var/run/charon.vici',
  })
})

t.test('malformed text is a typed error naming file and line', async (t) => {
  t.throws(() => parseStrongswanConf('charon {\n  threads 32\n}\n', 'x.conf'), new StrongswanConfError('x.conf', 2, 'cannot read "threads 32"'))
  t.throws(() => parseStrongswanConf('}\n', 'x.conf'), { name: 'StrongswanConfError', line: 1 })
  t.throws(() => parseStrongswanConf('charon {\n', 'x.conf'), /section charon not closed/)
})

t.test('chosen keys render back into nested charon lines that parse to the same values', async (t) => {
  const s = parseStrongswanConf(TEXT)
  const text = renderCharonSettings(s, ['charon.threads', 'charon.processor.priority_threads.high'])
  t.equal(text, '  threads = 48\n  processor {\n    priority_threads {\n      high = 2\n    }\n  }')
  const back = parseStrongswanConf(`charon {\n${text}\n}\n`)
  t.same(Object.fromEntries(back), { 'charon.threads': '48', 'charon.processor.priority_threads.high': '2' })
})

t.test('a missing or foreign key is refused, never silently left out', async (t) => {
  const s = parseStrongswanConf(TEXT)
  t.throws(() => renderCharonSettings(s, ['charon.ikesa_table_size']), /charon.ikesa_table_size is not set/)
  t.throws(() => renderCharonSettings(s, ['libstrongswan.x']), /not a charon setting/)
  t.throws(() => renderCharonSettings(new Map([['charon.threads', '1; rm']]), ['charon.threads']), /unexpected value/)
  t.ok(SCALE_KEYS.length > 0 && SCALE_KEYS.every((k) => k.startsWith('charon.')))
})
