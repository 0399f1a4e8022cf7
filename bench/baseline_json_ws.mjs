// Baseline for bench_heartbeat: a Node.js `ws` server that does the least a JSON presence
// server must do with a message: JSON.parse it. Nothing is answered except {"type":"ping"}
// ({"type":"pong"}), which bench_heartbeat sends after its heartbeats to know they were all
// handled. Same path, 64 KiB message cap and no compression as presenced.
//
// Usage: node bench/baseline_json_ws.mjs [--port 0]
// Logs "listening on http://127.0.0.1:PORT/" on stderr and, at exit (SIGTERM or SIGINT), the
// messages parsed.
import { WebSocketServer } from 'ws';

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;

const PONG = '{"type":"pong"}';
let parsed = 0;
let bad = 0;

const wss = new WebSocketServer({
  host: '127.0.0.1', // loopback only
  port,
  path: '/presence',
  perMessageDeflate: false,
  maxPayload: 64 * 1024,
  clientTracking: true,
});

wss.on('listening', () => {
  process.stderr.write(`listening on http://127.0.0.1:${wss.address().port}/\n`);
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      ws.close(1003, 'binary messages are not supported');
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch {
      bad++;
      return;
    }
    parsed++;
    if (msg !== null && typeof msg === 'object' && msg.type === 'ping') ws.send(PONG);
  });
  ws.on('error', () => ws.terminate());
});

function stop() {
  process.stderr.write(`parsed ${parsed} messages, ${bad} not JSON\n`);
  for (const ws of wss.clients) ws.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
