// Scores cache-tests results the way the suite counts them: a test's `kind` (absent =
// required) from tests/index.mjs (the published scores; the CLI also runs the
// Surrogate-Control tests, reported apart). Setup failures are not counted.
//
//   node cache_tests_score.mjs SUITE_DIR NAME=RESULTS.json... > summary.json
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, ...runs] = process.argv.slice(2)
const index = (await import(pathToFileURL(path.join(suiteDir, 'tests/index.mjs')))).default
const surrogate = (await import(pathToFileURL(path.join(suiteDir, 'tests/surrogate-control.mjs')))).default

function score (suites, results) {
  const counts = {}
  const failed = []
  for (const suite of suites) {
    for (const t of suite.tests) {
      const kind = t.kind || 'required'
      const c = counts[kind] || (counts[kind] = { tests: 0, counted: 0, passed: 0 })
      c.tests++
      const r = results[t.id]
      if (r === undefined) continue
      const setup = Array.isArray(r) && (r[0] === 'Setup' || r[0] === 'Retry')
      if (!setup) c.counted++
      if (r === true) c.passed++
      else if (!setup && kind !== 'check') failed.push({ id: t.id, kind, result: r, name: t.name })
    }
  }
  return { counts, failed }
}

const out = {}
for (const run of runs) {
  const eq = run.indexOf('=')
  const name = run.slice(0, eq)
  const results = JSON.parse(fs.readFileSync(run.slice(eq + 1)))
  out[name] = { suite: score(index, results), surrogate: score([surrogate], results) }
}
console.log(JSON.stringify(out, null, 2))
