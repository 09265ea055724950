// An AS2 endpoint made of libas2 on 127.0.0.1: it decrypts and verifies each message with
// libas2, stores the payload, and answers the MDN libas2 builds.
// Input (JSON on stdin): ours {id, cert, key}, theirs {id, cert}, folder, mdnSigning (false or
// "sha-256": libas2's signed MDNs end their signed part one CRLF early).
// Output: a line {"port": N} once listening, then one JSON line per message received.
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const { AS2Parser } = require('libas2');

function say(object) {
  process.stdout.write('\n' + JSON.stringify(object) + '\n');
}

// libas2's parser reads the body as UTF-8 text, which destroys a binary envelope (what
// raccord, pyas2lib and most AS2 servers send): the endpoint hands it over in base64, the
// same entity in another transfer encoding, as an HTTP front of a libas2 server must.
function asText(rawHeaders, body) {
  const headers = [];
  let binary = false;
  for (let index = 0; index < rawHeaders.length; index += 2) {
    const [name, value] = [rawHeaders[index], rawHeaders[index + 1]];
    if (name.toLowerCase() === 'content-transfer-encoding') {
      binary = value.trim().toLowerCase() === 'binary';
      continue;
    }
    headers.push(name, value);
  }
  if (!binary) return { headers: rawHeaders, content: body };
  headers.push('Content-Transfer-Encoding', 'base64');
  return { headers, content: body.toString('base64').replace(/.{76}/gu, '$&\r\n') };
}

async function answer(o, request, body) {
  const node = await AS2Parser.parse(asText(request.rawHeaders, body));
  const agreement = {
    host: {
      name: o.ours.id, id: o.ours.id, url: 'http://127.0.0.1:9/',
      certificate: fs.readFileSync(o.ours.cert, 'utf8'),
      privateKey: fs.readFileSync(o.ours.key, 'utf8'),
      decrypt: true, sign: false,
    },
    partner: {
      name: o.theirs.id, id: o.theirs.id, url: 'http://127.0.0.1:9/', file: 'XML',
      certificate: fs.readFileSync(o.theirs.cert, 'utf8'),
      encrypt: false, verify: true,
      mdn: { async: false, signing: o.mdnSigning },
    },
  };
  const { contentNode, dispositionNode, disposition } = await node.dispositionOut({ agreement });
  const report = {
    headers: request.rawHeaders.filter((_, index) => index % 2 === 0),
    messageId: node.messageId(),
    processed: disposition.notification.disposition.processed,
    explanation: disposition.explanation,
  };
  if (contentNode) {
    report.filename = contentNode.filename;
    report.contentType = contentNode.contentType;
    const stored = path.join(o.folder, path.basename(contentNode.filename || 'payload'));
    fs.writeFileSync(stored, contentNode.content);
    report.stored = stored;
  }
  say(report);
  return dispositionNode.buildObject();
}

function main() {
  const o = JSON.parse(fs.readFileSync(0, 'utf8'));
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      answer(o, request, Buffer.concat(chunks)).then(
        ({ headers, body }) => {
          response.writeHead(200, headers);
          response.end(body);
        },
        (error) => {
          say({ error: String(error && error.stack ? error.stack : error) });
          response.writeHead(500, { 'Content-Type': 'text/plain' });
          response.end(String(error));
        },
      );
    });
  });
  server.listen(0, '127.0.0.1', () => say({ port: server.address().port }));
}

main();
