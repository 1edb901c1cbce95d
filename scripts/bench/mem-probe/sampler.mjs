// Preloaded into the agent for diagnosis: SIGUSR2 starts V8's sampling heap profiler (counting objects collected
// since), the next SIGUSR2 stops it and writes the profile.
import { Session } from 'node:inspector'
import { writeFileSync } from 'node:fs'
const s = new Session()
s.connect()
let on = false
let n = 0
process.on('SIGUSR2', () => {
  if (!on) {
    on = true
    s.post('HeapProfiler.startSampling', { samplingInterval: 8192, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true }, (e) => { if (e) console.error('sampler', e) })
  } else {
    on = false
    s.post('HeapProfiler.stopSampling', (e, r) => {
      if (e) return console.error('sampler', e)
      writeFileSync(`${process.env.FT_SAMPLER_OUT ?? '/tmp'}/prof-${process.pid}-${n++}.json`, JSON.stringify(r.profile))
    })
  }
})
