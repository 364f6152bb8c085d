// Runs a script of tracker calls against the ctwasm component under Node.js, the component
// transpiled to JavaScript and core wasm by jco. The cross-runtime test (tests/node_runtime.rs)
// writes the script from a run under wasmtime and compares this run's outputs with it byte for
// byte: the component imports nothing, so any component runtime must give the same answers.
//
//   node drive.mjs COMPONENT.wasm SCRIPT OUTPUT
//
// SCRIPT is a sequence of calls, each an opcode byte and its arguments, little-endian:
//   1 create      seed:u64 n:u32 then n × (name_len:u16 name value_len:u16 value)
//   2 listeners   flags:u8 (1 present, 2 reliable)
//   3 ingest      now:u64 len:u32 packets (framed as the WIT's `ingest` says)
//   4 advance     now:u64
//   5 take        max:u32
//   6 report      n:u32 then n bytes (0 delivered, 1 failed)
//   7 snapshot
//   8 restore     len:u32 bytes
//   9 flush       now:u64
// OUTPUT gets, for each call that answers with bytes (ingest: the verdicts; take: the event
// frames; snapshot: its bytes), opcode:u8 len:u32 bytes.

import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { transpileBytes, writeFiles } from '@bytecodealliance/jco-transpile';

/** Snapshot bytes cross the boundary in pieces, as the WIT's `snapshot-bytes` asks. */
const PIECE = 16 << 20;

const [componentPath, scriptPath, outputPath] = process.argv.slice(2);
if (!outputPath) {
  console.error('usage: node drive.mjs COMPONENT.wasm SCRIPT OUTPUT');
  process.exit(2);
}

const dir = await mkdtemp(join(tmpdir(), 'ctwasm-jco-'));
try {
  const transpiled = await transpileBytes(await readFile(componentPath), {
    name: 'ctwasm',
    outDir: dir,
  });
  await writeFiles(transpiled.files, false);
  const { tracker: api } = await import(pathToFileURL(join(dir, 'ctwasm.js')).href);
  await writeFile(outputPath, run(api, await readFile(scriptPath)));
} finally {
  await rm(dir, { recursive: true, force: true });
}

function run(api, script) {
  const view = new DataView(script.buffer, script.byteOffset, script.byteLength);
  const out = [];
  let at = 0;
  let tracker = null;
  const u8 = () => view.getUint8(at++);
  const u16 = () => { const v = view.getUint16(at, true); at += 2; return v; };
  const u32 = () => { const v = view.getUint32(at, true); at += 4; return v; };
  const u64 = () => { const v = view.getBigUint64(at, true); at += 8; return v; };
  const bytes = (n) => { const b = script.subarray(at, at + n); at += n; return b; };
  const text = (n) => new TextDecoder().decode(bytes(n));
  const emit = (op, data) => {
    const head = Buffer.alloc(5);
    head.writeUInt8(op, 0);
    head.writeUInt32LE(data.length, 1);
    out.push(head, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  };
  while (at < script.length) {
    const op = u8();
    switch (op) {
      case 1: {
        const seed = u64();
        const sysctls = [];
        for (let n = u32(); n > 0; n--) {
          const name = text(u16());
          sysctls.push({ name, value: text(u16()) });
        }
        tracker = api.Tracker.create({ sysctls, seed, retryPolicy: 'grace' });
        break;
      }
      case 2: {
        const flags = u8();
        tracker.setListeners({ present: (flags & 1) !== 0, reliable: (flags & 2) !== 0 });
        break;
      }
      case 3: {
        const now = u64();
        const packets = bytes(u32());
        emit(op, tracker.ingest(now, packets).verdicts);
        break;
      }
      case 4:
        tracker.advance(u64());
        break;
      case 5:
        emit(op, tracker.takeEvents(u32()));
        break;
      case 6: {
        const n = u32();
        const results = Array.from(bytes(n), (b) => (b === 0 ? 'delivered' : 'failed'));
        tracker.reportDelivery(results);
        break;
      }
      case 7: {
        const buffer = tracker.snapshot();
        const len = Number(buffer.len());
        const parts = [];
        for (let offset = 0; offset < len; offset += PIECE) {
          parts.push(buffer.read(BigInt(offset), PIECE));
        }
        emit(op, Buffer.concat(parts));
        break;
      }
      case 8: {
        const buffer = new api.SnapshotBytes();
        buffer.append(bytes(u32()));
        tracker = api.Tracker.restore(buffer);
        break;
      }
      case 9:
        tracker.flush(u64());
        break;
      default:
        throw new Error(`unknown opcode ${op} at byte ${at - 1}`);
    }
  }
  return Buffer.concat(out);
}
