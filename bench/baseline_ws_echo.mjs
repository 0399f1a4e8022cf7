// Baseline for bench_msg_rate: a minimal Node.js `ws` server that answers the application's
// transport check like presenced does ({"type":"ping"} -> {"type":"pong"}, anything else an
// error), on the same path, with the same 64 KiB message cap and no compression.
//
// Usage: node bench/baseline_ws_echo.mjs [--port 0]
// Logs "listening on http://127.0.0.1:PORT/" on stderr; exits on SIGTERM or SIGINT.
import { WebSocketServer } from 'ws';

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;

const PONG = '{"type":"pong"}';
const BAD_JSON = '{"type":"error","code":"bad_json","message":"not valid JSON"}';
const UNKNOWN = '{"type":"error","code":"unknown_type","message":"unknown message type"}';

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
      ws.send(BAD_JSON);
      return;
    }
    ws.send(msg !== null && typeof msg === 'object' && msg.type === 'ping' ? PONG : UNKNOWN);
  });
  ws.on('error', () => ws.terminate());
});

function stop() {
  for (const ws of wss.clients) ws.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
